import java.io.FileInputStream;
import java.io.OutputStream;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import javax.net.ssl.*;

// A TLS 1.3 client that, like many Java and Go programs, writes before it reads:
// java AlertClient.java HOST PORT KEYSTORE.p12 (password "secret").
public class AlertClient {
    public static void main(String[] args) throws Exception {
        char[] password = "secret".toCharArray();
        KeyStore keys = KeyStore.getInstance("PKCS12");
        keys.load(new FileInputStream(args[2]), password);
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(keys, password);
        TrustManager[] anyServer = {new X509TrustManager() {
            public void checkClientTrusted(X509Certificate[] c, String t) {}
            public void checkServerTrusted(X509Certificate[] c, String t) {}
            public X509Certificate[] getAcceptedIssuers() { return new X509Certificate[0]; }
        }};
        SSLContext context = SSLContext.getInstance("TLSv1.3");
        context.init(kmf.getKeyManagers(), anyServer, null);
        try (SSLSocket socket = (SSLSocket) context.getSocketFactory().createSocket(args[0], Integer.parseInt(args[1]))) {
            OutputStream out = socket.getOutputStream();
            byte[] chunk = new byte[16384];
            for (int i = 0; i < 64; i++) {
                out.write(chunk);
            }
            out.flush();
            System.out.println("read " + socket.getInputStream().read());
        } catch (Exception e) {
            System.out.println("error: " + e);
        }
    }
}
