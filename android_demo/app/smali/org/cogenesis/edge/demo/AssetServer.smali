# CoGenesis Edge demo - serves https://appassets.androidplatform.net/ from inside the app.
#
# AndroidX's WebViewAssetLoader is not available in an offline build without Google Maven, so this is the
# same idea by hand: every request on the appassets host is answered here, everything else goes to the
# network as usual (the cloud LLM, or a laptop serving a bundle).
#
#   /assets/<path>  -> the APK's assets/<path>            (UI, JS runtime, onnxruntime-web WASM)
#   /bundle/<path>  -> getExternalFilesDir(null)/bundle/<path>  i.e.
#                      /sdcard/Android/data/org.cogenesis.edge.demo/files/bundle/<path>  (adb push)
#
# Every response carries COOP/COEP (so a WebView that supports cross-origin isolation may give WASM
# threads), CORP, ACAO and no-store. android_demo/tools/devserver.py mirrors this for desktop tests: keep
# the MIME table and headers in sync with it.
#
# Java equivalent:
#
#   public class AssetServer extends WebViewClient {
#       public static final String HOST = "appassets.androidplatform.net";
#       private final Context ctx;
#       public AssetServer(Context c) { ctx = c; }
#       public WebResourceResponse shouldInterceptRequest(WebView view, WebResourceRequest req) {
#           Uri u = req.getUrl();
#           if (u == null || !HOST.equals(u.getHost())) return null;
#           String path = u.getPath(); if (path == null) path = "/";
#           if (path.contains("..")) return respond("text/plain", 403, "Forbidden", headers(), empty());
#           HashMap<String,String> h = headers();
#           try {
#               InputStream in;
#               if (path.startsWith("/assets/")) in = ctx.getAssets().open(path.substring(8));
#               else if (path.startsWith("/bundle/")) {
#                   File dir = ctx.getExternalFilesDir(null);
#                   if (dir == null) return notFound();
#                   File f = new File(new File(dir, "bundle"), path.substring(8));
#                   if (!f.isFile()) return notFound();
#                   h.put("Content-Length", String.valueOf(f.length()));
#                   in = new FileInputStream(f);
#               } else return notFound();
#               return respond(mimeFor(path), 200, "OK", h, in);
#           } catch (Exception e) { return notFound(); }
#       }
#       static WebResourceResponse respond(String mime, int code, String reason, Map h, InputStream in) {
#           return new WebResourceResponse(mime, encodingFor(mime), code, reason, h, in);
#       }
#       static WebResourceResponse notFound() { return respond("text/plain", 404, "Not Found", headers(), empty()); }
#       static InputStream empty() { return new ByteArrayInputStream(new byte[0]); }
#       static String encodingFor(String mime) { return mime.startsWith("text/") || mime.equals("application/json") || mime.equals("image/svg+xml") ? "utf-8" : null; }
#       static String mimeFor(String path) { ... extension table ... else "application/octet-stream"; }
#       static HashMap<String,String> headers() { ... COOP, COEP, CORP, ACAO, Cache-Control ... }
#   }

.class public Lorg/cogenesis/edge/demo/AssetServer;
.super Landroid/webkit/WebViewClient;
.source "AssetServer.java"

.field public static final HOST:Ljava/lang/String; = "appassets.androidplatform.net"

.field private final ctx:Landroid/content/Context;


.method public constructor <init>(Landroid/content/Context;)V
    .registers 2
    invoke-direct {p0}, Landroid/webkit/WebViewClient;-><init>()V
    iput-object p1, p0, Lorg/cogenesis/edge/demo/AssetServer;->ctx:Landroid/content/Context;
    return-void
.end method


.method public shouldInterceptRequest(Landroid/webkit/WebView;Landroid/webkit/WebResourceRequest;)Landroid/webkit/WebResourceResponse;
    .registers 12
    # v0 uri/tmp, v1 path, v2 tmp/rel, v3 headers, v4 stream/file, v5-v6 tmp (v5:v6 wide), v7 tmp, v8 tmp
    # p0 = v9 this, p1 = v10 view, p2 = v11 request
    invoke-interface {p2}, Landroid/webkit/WebResourceRequest;->getUrl()Landroid/net/Uri;
    move-result-object v0
    if-nez v0, :have_url
    const/4 v1, 0x0
    return-object v1

    :have_url
    invoke-virtual {v0}, Landroid/net/Uri;->getHost()Ljava/lang/String;
    move-result-object v1
    const-string v2, "appassets.androidplatform.net"
    invoke-virtual {v2, v1}, Ljava/lang/String;->equals(Ljava/lang/Object;)Z
    move-result v2
    if-nez v2, :ours
    const/4 v1, 0x0
    return-object v1

    :ours
    invoke-virtual {v0}, Landroid/net/Uri;->getPath()Ljava/lang/String;
    move-result-object v1
    if-nez v1, :have_path
    const-string v1, "/"

    :have_path
    const-string v2, ".."
    invoke-virtual {v1, v2}, Ljava/lang/String;->contains(Ljava/lang/CharSequence;)Z
    move-result v2
    if-eqz v2, :safe
    const-string v4, "text/plain"
    const/16 v5, 0x193
    const-string v6, "Forbidden"
    invoke-static {}, Lorg/cogenesis/edge/demo/AssetServer;->headers()Ljava/util/HashMap;
    move-result-object v7
    invoke-static {}, Lorg/cogenesis/edge/demo/AssetServer;->empty()Ljava/io/InputStream;
    move-result-object v8
    invoke-static {v4, v5, v6, v7, v8}, Lorg/cogenesis/edge/demo/AssetServer;->respond(Ljava/lang/String;ILjava/lang/String;Ljava/util/Map;Ljava/io/InputStream;)Landroid/webkit/WebResourceResponse;
    move-result-object v0
    return-object v0

    :safe
    invoke-static {}, Lorg/cogenesis/edge/demo/AssetServer;->headers()Ljava/util/HashMap;
    move-result-object v3

    :try_start
    const-string v2, "/assets/"
    invoke-virtual {v1, v2}, Ljava/lang/String;->startsWith(Ljava/lang/String;)Z
    move-result v2
    if-eqz v2, :not_assets
    const/16 v2, 0x8
    invoke-virtual {v1, v2}, Ljava/lang/String;->substring(I)Ljava/lang/String;
    move-result-object v2
    iget-object v4, p0, Lorg/cogenesis/edge/demo/AssetServer;->ctx:Landroid/content/Context;
    invoke-virtual {v4}, Landroid/content/Context;->getAssets()Landroid/content/res/AssetManager;
    move-result-object v4
    invoke-virtual {v4, v2}, Landroid/content/res/AssetManager;->open(Ljava/lang/String;)Ljava/io/InputStream;
    move-result-object v4
    goto :respond

    :not_assets
    const-string v2, "/bundle/"
    invoke-virtual {v1, v2}, Ljava/lang/String;->startsWith(Ljava/lang/String;)Z
    move-result v2
    if-eqz v2, :not_found
    const/16 v2, 0x8
    invoke-virtual {v1, v2}, Ljava/lang/String;->substring(I)Ljava/lang/String;
    move-result-object v2
    iget-object v4, p0, Lorg/cogenesis/edge/demo/AssetServer;->ctx:Landroid/content/Context;
    const/4 v5, 0x0
    invoke-virtual {v4, v5}, Landroid/content/Context;->getExternalFilesDir(Ljava/lang/String;)Ljava/io/File;
    move-result-object v4
    if-eqz v4, :not_found
    new-instance v5, Ljava/io/File;
    const-string v6, "bundle"
    invoke-direct {v5, v4, v6}, Ljava/io/File;-><init>(Ljava/io/File;Ljava/lang/String;)V
    new-instance v4, Ljava/io/File;
    invoke-direct {v4, v5, v2}, Ljava/io/File;-><init>(Ljava/io/File;Ljava/lang/String;)V
    invoke-virtual {v4}, Ljava/io/File;->isFile()Z
    move-result v5
    if-eqz v5, :not_found
    invoke-virtual {v4}, Ljava/io/File;->length()J
    move-result-wide v5
    invoke-static {v5, v6}, Ljava/lang/String;->valueOf(J)Ljava/lang/String;
    move-result-object v5
    const-string v6, "Content-Length"
    invoke-virtual {v3, v6, v5}, Ljava/util/HashMap;->put(Ljava/lang/Object;Ljava/lang/Object;)Ljava/lang/Object;
    new-instance v5, Ljava/io/FileInputStream;
    invoke-direct {v5, v4}, Ljava/io/FileInputStream;-><init>(Ljava/io/File;)V
    move-object v4, v5

    :respond
    invoke-static {v1}, Lorg/cogenesis/edge/demo/AssetServer;->mimeFor(Ljava/lang/String;)Ljava/lang/String;
    move-result-object v5
    const/16 v6, 0xc8
    const-string v7, "OK"
    invoke-static {v5, v6, v7, v3, v4}, Lorg/cogenesis/edge/demo/AssetServer;->respond(Ljava/lang/String;ILjava/lang/String;Ljava/util/Map;Ljava/io/InputStream;)Landroid/webkit/WebResourceResponse;
    move-result-object v0
    :try_end
    .catch Ljava/lang/Exception; {:try_start .. :try_end} :catch_any
    return-object v0

    :catch_any
    move-exception v0

    :not_found
    invoke-static {}, Lorg/cogenesis/edge/demo/AssetServer;->notFound()Landroid/webkit/WebResourceResponse;
    move-result-object v0
    return-object v0
.end method


.method static respond(Ljava/lang/String;ILjava/lang/String;Ljava/util/Map;Ljava/io/InputStream;)Landroid/webkit/WebResourceResponse;
    .registers 12
    # range v0..v6 = (new instance, mime, encoding, code, reason, headers, stream); p0..p4 = v7..v11
    new-instance v0, Landroid/webkit/WebResourceResponse;
    move-object v1, p0
    invoke-static {p0}, Lorg/cogenesis/edge/demo/AssetServer;->encodingFor(Ljava/lang/String;)Ljava/lang/String;
    move-result-object v2
    move v3, p1
    move-object v4, p2
    move-object v5, p3
    move-object v6, p4
    invoke-direct/range {v0 .. v6}, Landroid/webkit/WebResourceResponse;-><init>(Ljava/lang/String;Ljava/lang/String;ILjava/lang/String;Ljava/util/Map;Ljava/io/InputStream;)V
    return-object v0
.end method


.method static notFound()Landroid/webkit/WebResourceResponse;
    .registers 6
    const-string v0, "text/plain"
    const/16 v1, 0x194
    const-string v2, "Not Found"
    invoke-static {}, Lorg/cogenesis/edge/demo/AssetServer;->headers()Ljava/util/HashMap;
    move-result-object v3
    invoke-static {}, Lorg/cogenesis/edge/demo/AssetServer;->empty()Ljava/io/InputStream;
    move-result-object v4
    invoke-static {v0, v1, v2, v3, v4}, Lorg/cogenesis/edge/demo/AssetServer;->respond(Ljava/lang/String;ILjava/lang/String;Ljava/util/Map;Ljava/io/InputStream;)Landroid/webkit/WebResourceResponse;
    move-result-object v0
    return-object v0
.end method


.method static empty()Ljava/io/InputStream;
    .registers 2
    const/4 v0, 0x0
    new-array v0, v0, [B
    new-instance v1, Ljava/io/ByteArrayInputStream;
    invoke-direct {v1, v0}, Ljava/io/ByteArrayInputStream;-><init>([B)V
    return-object v1
.end method


.method static encodingFor(Ljava/lang/String;)Ljava/lang/String;
    .registers 3
    const-string v0, "text/"
    invoke-virtual {p0, v0}, Ljava/lang/String;->startsWith(Ljava/lang/String;)Z
    move-result v0
    if-nez v0, :utf8
    const-string v0, "application/json"
    invoke-virtual {p0, v0}, Ljava/lang/String;->equals(Ljava/lang/Object;)Z
    move-result v0
    if-nez v0, :utf8
    const-string v0, "image/svg+xml"
    invoke-virtual {p0, v0}, Ljava/lang/String;->equals(Ljava/lang/Object;)Z
    move-result v0
    if-nez v0, :utf8
    const/4 v0, 0x0
    return-object v0
    :utf8
    const-string v0, "utf-8"
    return-object v0
.end method


.method static mimeFor(Ljava/lang/String;)Ljava/lang/String;
    .registers 2
    const-string v0, ".html"
    invoke-virtual {p0, v0}, Ljava/lang/String;->endsWith(Ljava/lang/String;)Z
    move-result v0
    if-eqz v0, :next_0
    const-string v0, "text/html"
    return-object v0
    :next_0
    const-string v0, ".mjs"
    invoke-virtual {p0, v0}, Ljava/lang/String;->endsWith(Ljava/lang/String;)Z
    move-result v0
    if-eqz v0, :next_1
    const-string v0, "text/javascript"
    return-object v0
    :next_1
    const-string v0, ".js"
    invoke-virtual {p0, v0}, Ljava/lang/String;->endsWith(Ljava/lang/String;)Z
    move-result v0
    if-eqz v0, :next_2
    const-string v0, "text/javascript"
    return-object v0
    :next_2
    const-string v0, ".css"
    invoke-virtual {p0, v0}, Ljava/lang/String;->endsWith(Ljava/lang/String;)Z
    move-result v0
    if-eqz v0, :next_3
    const-string v0, "text/css"
    return-object v0
    :next_3
    const-string v0, ".json"
    invoke-virtual {p0, v0}, Ljava/lang/String;->endsWith(Ljava/lang/String;)Z
    move-result v0
    if-eqz v0, :next_4
    const-string v0, "application/json"
    return-object v0
    :next_4
    const-string v0, ".jinja"
    invoke-virtual {p0, v0}, Ljava/lang/String;->endsWith(Ljava/lang/String;)Z
    move-result v0
    if-eqz v0, :next_5
    const-string v0, "text/plain"
    return-object v0
    :next_5
    const-string v0, ".txt"
    invoke-virtual {p0, v0}, Ljava/lang/String;->endsWith(Ljava/lang/String;)Z
    move-result v0
    if-eqz v0, :next_6
    const-string v0, "text/plain"
    return-object v0
    :next_6
    const-string v0, ".wasm"
    invoke-virtual {p0, v0}, Ljava/lang/String;->endsWith(Ljava/lang/String;)Z
    move-result v0
    if-eqz v0, :next_7
    const-string v0, "application/wasm"
    return-object v0
    :next_7
    const-string v0, ".png"
    invoke-virtual {p0, v0}, Ljava/lang/String;->endsWith(Ljava/lang/String;)Z
    move-result v0
    if-eqz v0, :next_8
    const-string v0, "image/png"
    return-object v0
    :next_8
    const-string v0, ".svg"
    invoke-virtual {p0, v0}, Ljava/lang/String;->endsWith(Ljava/lang/String;)Z
    move-result v0
    if-eqz v0, :next_9
    const-string v0, "image/svg+xml"
    return-object v0
    :next_9
    const-string v0, "application/octet-stream"
    return-object v0
.end method


.method static headers()Ljava/util/HashMap;
    .registers 3
    new-instance v0, Ljava/util/HashMap;
    invoke-direct {v0}, Ljava/util/HashMap;-><init>()V
    const-string v1, "Cross-Origin-Opener-Policy"
    const-string v2, "same-origin"
    invoke-virtual {v0, v1, v2}, Ljava/util/HashMap;->put(Ljava/lang/Object;Ljava/lang/Object;)Ljava/lang/Object;
    const-string v1, "Cross-Origin-Embedder-Policy"
    const-string v2, "require-corp"
    invoke-virtual {v0, v1, v2}, Ljava/util/HashMap;->put(Ljava/lang/Object;Ljava/lang/Object;)Ljava/lang/Object;
    const-string v1, "Cross-Origin-Resource-Policy"
    const-string v2, "cross-origin"
    invoke-virtual {v0, v1, v2}, Ljava/util/HashMap;->put(Ljava/lang/Object;Ljava/lang/Object;)Ljava/lang/Object;
    const-string v1, "Access-Control-Allow-Origin"
    const-string v2, "*"
    invoke-virtual {v0, v1, v2}, Ljava/util/HashMap;->put(Ljava/lang/Object;Ljava/lang/Object;)Ljava/lang/Object;
    const-string v1, "Cache-Control"
    const-string v2, "no-store"
    invoke-virtual {v0, v1, v2}, Ljava/util/HashMap;->put(Ljava/lang/Object;Ljava/lang/Object;)Ljava/lang/Object;
    return-object v0
.end method
