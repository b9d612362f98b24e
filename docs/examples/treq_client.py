"""
An HTTPS client with a client certificate: twisted.web's Agent, through
treq, with mtlsd's client settings.  Run next to a development PKI:

    python treq_client.py https://localhost:8443/

It prints the answer's status and body.  C{--cert NAME} presents
C{mtlsd-pki/NAME.crt} instead of C{client.crt}.
"""

import sys

import treq
from twisted.internet.defer import ensureDeferred
from twisted.internet.error import ConnectError
from twisted.internet.task import react
from twisted.web.client import Agent, ResponseNeverReceived

from mtlsd import ClientTLSSettings


async def main(reactor, url, name="client"):
    settings = ClientTLSSettings.fromFiles(
        f"mtlsd-pki/{name}.crt", f"mtlsd-pki/{name}.key", "mtlsd-pki/ca.crt"
    )
    # Presents the certificate; verifies the server's chain and its name (the URL's host).
    agent = Agent(reactor, contextFactory=settings.policyForHTTPS())
    try:
        response = await treq.get(url, agent=agent)
    except ResponseNeverReceived as e:  # refused, or the server did not verify
        raise SystemExit(f"no answer from {url}: {e.reasons[0].getErrorMessage()}") from None
    except ConnectError as e:
        raise SystemExit(f"cannot connect to {url}: {e}") from None
    print(response.code, (await response.text()).strip())


if __name__ == "__main__":
    arguments = sys.argv[1:]
    name = "client"
    if arguments[:1] == ["--cert"]:
        name, arguments = arguments[1], arguments[2:]
    react(lambda reactor: ensureDeferred(main(reactor, arguments[0], name)))
