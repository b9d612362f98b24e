"""
A twisted.web resource that tells each client who its certificate says it
is.  Served with mutual TLS by C{twistd web} and an C{mtls:} string:

    PYTHONPATH=. twistd -n web --class whoami_web.WhoAmI \\
        --listen mtls:8443:certKey=mtlsd-pki/server.crt:privateKey=mtlsd-pki/server.key:clientCerts=mtlsd-pki/ca.crt
    curl --cert mtlsd-pki/client.crt --key mtlsd-pki/client.key --cacert mtlsd-pki/ca.crt https://localhost:8443/

or by the mtlsd daemon itself: C{PYTHONPATH=. twistd -n mtlsd --app whoami_web.site}.
"""

from twisted.web.resource import Resource
from twisted.web.server import Site

from mtlsd import peerIdentity


class WhoAmI(Resource):
    isLeaf = True

    def render_GET(self, request):
        peer = peerIdentity(request.transport)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            f"CN={peer.commonName}\nsha256={peer.fingerprint}\nuris={','.join(peer.uris)}\n"
        ).encode()


def site():
    """
    For C{twistd mtlsd --app whoami_web.site}.
    """
    return Site(WhoAmI())
