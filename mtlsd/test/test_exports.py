"""
The public surface: names exported by L{mtlsd}, interfaces, and plugins.
"""

from twisted.application.service import IServiceMaker
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamServerEndpoint,
)
from twisted.internet.testing import MemoryReactor
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import mtlsd
from mtlsd import (
    _build,
    _client,
    _context,
    _errors,
    _identity,
    _policy,
    _reload,
    _server,
    _settings,
)
from mtlsd.testing import CertificateAuthority, clientContext, serverContext


class ExportTests(SynchronousTestCase):
    def test_publicNamesArePrivateObjects(self) -> None:
        """
        Every name in C{mtlsd.__all__} is the object of its private module.
        """
        modules = [
            _build,
            _client,
            _context,
            _errors,
            _identity,
            _policy,
            _reload,
            _server,
            _settings,
        ]
        for name in mtlsd.__all__:
            homes = [m for m in modules if getattr(m, name, None) is getattr(mtlsd, name)]
            self.assertTrue(homes, name)
        self.assertEqual(sorted(mtlsd.__all__), sorted(set(mtlsd.__all__)))


class InterfaceTests(SynchronousTestCase):
    def test_implementations(self) -> None:
        """
        The connection creators and the endpoint provide their interfaces.
        """
        ca = CertificateAuthority()
        server = serverContext(ca.server(), [ca.certificate])
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, server))
        self.assertTrue(
            verifyObject(IOpenSSLClientConnectionCreator, clientContext(None, [ca.certificate]))
        )
        endpoint = mtlsd.MtlsServerEndpoint(server, TCP4ServerEndpoint(MemoryReactor(), 0))
        self.assertTrue(verifyObject(IStreamServerEndpoint, endpoint))


class PluginTests(SynchronousTestCase):
    def test_twistdPlugin(self) -> None:
        """
        twistd finds the C{mtlsd} service maker, whose options are mtlsd's.
        """
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("mtlsd", makers)
        maker = makers["mtlsd"]
        self.assertTrue(verifyObject(IServiceMaker, maker))
        self.assertTrue(verifyObject(IPlugin, maker))
        from mtlsd._tap import Options

        self.assertIs(maker.options, Options)
