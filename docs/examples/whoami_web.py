"""
A twisted.web site that tells each client who its certificate says it is,
with a part only the client whose CN is C{admin} may see.  Served with
mutual TLS by C{twistd web} and an C{mtls:} string:

    PYTHONPATH=. twistd -n web --class whoami_web.Root \\
        --listen mtls:8443:certKey=mtlsd-pki/server.crt:privateKey=mtlsd-pki/server.key:clientCerts=mtlsd-pki/ca.crt
    curl --cert mtlsd-pki/client.crt --key mtlsd-pki/client.key --cacert mtlsd-pki/ca.crt https://localhost:8443/
    curl --cert mtlsd-pki/client.crt --key mtlsd-pki/client.key --cacert mtlsd-pki/ca.crt https://localhost:8443/admin/

(the second answers 403: C{mtlsd pki issue admin} makes a certificate it
admits), or by the mtlsd daemon itself: C{PYTHONPATH=. twistd -n mtlsd --app
whoami_web.site}.  It speaks HTTP/2 as well (C{curl --http2}) when the C{h2}
extra is installed.
"""

from twisted.web.resource import Resource
from twisted.web.server import Site

from mtlsd import AllowPolicy, peerIdentity
from mtlsd.web import requireIdentity


class WhoAmI(Resource):
    isLeaf = True

    def render_GET(self, request):
        peer = peerIdentity(request)  # HTTP/1.1 and HTTP/2 alike
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            f"CN={peer.commonName}\nsha256={peer.fingerprint}\nuris={','.join(peer.uris)}\n"
        ).encode()


class Root(Resource):
    """
    C{/}: who you are; C{/admin/}: the same, for the C{admin} client only.
    """

    def __init__(self):
        super().__init__()
        self.putChild(b"", WhoAmI())
        self.putChild(b"admin", requireIdentity(WhoAmI(), AllowPolicy(commonNames=["admin"])))


def site():
    """
    For C{twistd mtlsd --app whoami_web.site}.
    """
    return Site(Root())
