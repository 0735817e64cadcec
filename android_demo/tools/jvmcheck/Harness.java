import android.app.Activity;
import android.content.Context;
import android.content.Intent;
import android.net.Uri;
import android.webkit.WebResourceRequest;
import android.webkit.WebResourceResponse;
import android.webkit.WebView;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.InputStream;
import java.nio.file.Files;
import java.util.Map;
import org.cogenesis.edge.demo.AssetServer;
import org.cogenesis.edge.demo.MainActivity;

/**
 * Runs the app's dex code on a JVM: classes.dex -> (enjarify) -> JVM bytecode, linked against stubs of the
 * Android API with the same signatures (stubs/). The JVM verifier type-checks every method, and these checks
 * exercise MainActivity.onCreate/onNewIntent/onBackPressed/onDestroy and AssetServer.shouldInterceptRequest.
 * Usage: java -cp stubs:app.jar:. Harness <assets dir> <external files dir>
 */
public class Harness {
    static int failures = 0;

    static void check(String name, boolean ok, String detail) {
        System.out.println((ok ? "OK   " : "FAIL ") + name + (ok ? "" : ": " + detail));
        if (!ok) failures++;
    }

    static WebResourceRequest req(final String url) {
        return new WebResourceRequest() { public Uri getUrl() { return Uri.parse(url); } };
    }

    static byte[] readAll(InputStream in) throws Exception {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] buf = new byte[65536];
        int n;
        while ((n = in.read(buf)) > 0) out.write(buf, 0, n);
        in.close();
        return out.toByteArray();
    }

    public static void main(String[] args) throws Exception {
        String assets = args[0], files = args[1];
        Context.ASSETS_ROOT = assets;
        Context.FILES_DIR = files;
        String start = "https://appassets.androidplatform.net/assets/www/index.html";

        MainActivity act = new MainActivity();
        act.setIntent(new Intent().putExtra("query", "cloud=http://192.168.1.20:8000&mode=sketch"));
        Activity.performCreate(act, null);
        WebView w = WebView.last;
        check("onCreate calls super", act.superCreated, "");
        check("onCreate sets a WebView as content", w != null && act.contentView == w, String.valueOf(act.contentView));
        check("WebView debugging enabled", WebView.debuggingEnabled, "");
        check("JS + DOM storage on, file/content access off, mixed content allowed",
            w.settings.js && w.settings.dom && !w.settings.file && !w.settings.content && w.settings.mixed == 0,
            "js=" + w.settings.js + " dom=" + w.settings.dom + " file=" + w.settings.file + " mixed=" + w.settings.mixed);
        check("client is AssetServer", w.client instanceof AssetServer, String.valueOf(w.client));
        check("chrome client set", w.chromeClient != null, "");
        check("loads start URL + intent query", (start + "?cloud=http://192.168.1.20:8000&mode=sketch").equals(w.loadedUrl), w.loadedUrl);

        Activity.performNewIntent(act, new Intent().putExtra("query", "mode=local"));
        check("onNewIntent reloads with the new query", (start + "?mode=local").equals(w.loadedUrl), w.loadedUrl);
        MainActivity plain = new MainActivity();
        plain.setIntent(new Intent());
        Activity.performCreate(plain, null);
        check("no query -> plain start URL", start.equals(WebView.last.loadedUrl), WebView.last.loadedUrl);

        AssetServer s = (AssetServer) w.client;
        WebResourceResponse r = s.shouldInterceptRequest(w, req(start));
        check("index.html: 200 text/html utf-8", r != null && r.getStatusCode() == 200 && "text/html".equals(r.getMimeType())
            && "utf-8".equals(r.getEncoding()), r == null ? "null" : r.getStatusCode() + " " + r.getMimeType());
        byte[] want = Files.readAllBytes(new File(assets, "www/index.html").toPath());
        check("index.html: body is the asset", java.util.Arrays.equals(readAll(r.getData()), want), "");
        Map<String, String> h = r.getResponseHeaders();
        check("COOP/COEP/CORP headers", "same-origin".equals(h.get("Cross-Origin-Opener-Policy"))
            && "require-corp".equals(h.get("Cross-Origin-Embedder-Policy"))
            && "cross-origin".equals(h.get("Cross-Origin-Resource-Policy")), String.valueOf(h));

        r = s.shouldInterceptRequest(w, req("https://appassets.androidplatform.net/assets/www/vendor/ort-wasm-simd-threaded.wasm"));
        check("wasm: application/wasm, no encoding", r.getStatusCode() == 200 && "application/wasm".equals(r.getMimeType()) && r.getEncoding() == null,
            r.getStatusCode() + " " + r.getMimeType() + " " + r.getEncoding());
        r.getData().close();
        r = s.shouldInterceptRequest(w, req("https://appassets.androidplatform.net/assets/www/js/app.js"));
        check("js: text/javascript", r.getStatusCode() == 200 && "text/javascript".equals(r.getMimeType()), r.getMimeType());
        r.getData().close();
        r = s.shouldInterceptRequest(w, req("https://appassets.androidplatform.net/assets/www/nope.js"));
        check("missing asset: 404", r.getStatusCode() == 404 && "Not Found".equals(r.getReasonPhrase()), String.valueOf(r.getStatusCode()));

        File bundleFile = new File(files, "bundle/manifest.json");
        r = s.shouldInterceptRequest(w, req("https://appassets.androidplatform.net/bundle/manifest.json"));
        check("bundle file: 200 application/json + Content-Length", r.getStatusCode() == 200 && "application/json".equals(r.getMimeType())
            && String.valueOf(bundleFile.length()).equals(r.getResponseHeaders().get("Content-Length")),
            r.getStatusCode() + " " + r.getMimeType() + " " + r.getResponseHeaders());
        check("bundle file: body", java.util.Arrays.equals(readAll(r.getData()), Files.readAllBytes(bundleFile.toPath())), "");
        r = s.shouldInterceptRequest(w, req("https://appassets.androidplatform.net/bundle/model.onnx"));
        check("bundle .onnx: octet-stream", r.getStatusCode() == 200 && "application/octet-stream".equals(r.getMimeType()), r.getMimeType());
        r.getData().close();
        r = s.shouldInterceptRequest(w, req("https://appassets.androidplatform.net/bundle/missing.onnx"));
        check("missing bundle file: 404", r.getStatusCode() == 404, String.valueOf(r.getStatusCode()));
        r = s.shouldInterceptRequest(w, req("https://appassets.androidplatform.net/bundle/../../secret.txt"));
        check("path traversal: 403", r.getStatusCode() == 403, String.valueOf(r.getStatusCode()));
        r = s.shouldInterceptRequest(w, req("https://appassets.androidplatform.net/other/x"));
        check("unknown prefix: 404", r.getStatusCode() == 404, String.valueOf(r.getStatusCode()));
        check("other hosts go to the network", s.shouldInterceptRequest(w, req("http://192.168.1.20:8000/v1/chat/completions")) == null, "");

        Context.FILES_DIR = null; // external storage unavailable
        r = s.shouldInterceptRequest(w, req("https://appassets.androidplatform.net/bundle/manifest.json"));
        check("no external storage: 404", r.getStatusCode() == 404, String.valueOf(r.getStatusCode()));

        w.backAvailable = true;
        act.onBackPressed();
        check("back navigates the WebView", w.wentBack && !act.superBackPressed, "");
        w.backAvailable = false;
        act.onBackPressed();
        check("back at the start leaves the activity", act.superBackPressed, "");
        Activity.performDestroy(act);
        check("onDestroy destroys the WebView and calls super", w.destroyed && act.superDestroyed, "");

        System.out.println(failures == 0 ? "ALL OK" : failures + " FAILED");
        System.exit(failures == 0 ? 0 : 1);
    }
}
