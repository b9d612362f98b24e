# -*- test-case-name: mtlsd.test.test_files -*-
"""
The errors mtlsd raises for bad input.
"""


class ConfigurationError(Exception):
    """
    Bad start-up input (a file, an option).  The message is one sentence that
    names the file or option and what is wrong with it; front ends print it
    as it is, without a traceback.
    """
