# CoGenesis Edge demo - the only Activity: a full-screen WebView on the app's own assets.
#
# Java equivalent (kept in sync by hand; there is no javac/d8 in the offline build):
#
#   public class MainActivity extends Activity {
#       public static final String START_URL = "https://appassets.androidplatform.net/assets/www/index.html";
#       private WebView web;
#       protected void onCreate(Bundle state) {
#           super.onCreate(state);
#           WebView.setWebContentsDebuggingEnabled(true);           // chrome://inspect over adb
#           web = new WebView(this);
#           WebSettings s = web.getSettings();
#           s.setJavaScriptEnabled(true);
#           s.setDomStorageEnabled(true);                           // localStorage holds the private context
#           s.setAllowFileAccess(false);
#           s.setAllowContentAccess(false);
#           s.setMixedContentMode(WebSettings.MIXED_CONTENT_ALWAYS_ALLOW); // http:// laptop on the LAN
#           web.setWebViewClient(new AssetServer(this));
#           web.setWebChromeClient(new WebChromeClient());
#           setContentView(web);
#           web.loadUrl(startUrl(getIntent()));
#       }
#       protected void onNewIntent(Intent i) {                      // am start ... --es query "..." again
#           super.onNewIntent(i); setIntent(i);
#           if (i != null && i.getStringExtra("query") != null && web != null) web.loadUrl(startUrl(i));
#       }
#       static String startUrl(Intent i) {                          // --es query "cloud=http://...&mode=sketch"
#           String q = i == null ? null : i.getStringExtra("query");
#           return q == null ? START_URL : START_URL + "?" + q;
#       }
#       public void onBackPressed() { if (web != null && web.canGoBack()) web.goBack(); else super.onBackPressed(); }
#       protected void onDestroy() { if (web != null) { web.destroy(); web = null; } super.onDestroy(); }
#   }

.class public Lorg/cogenesis/edge/demo/MainActivity;
.super Landroid/app/Activity;
.source "MainActivity.java"

.field public static final START_URL:Ljava/lang/String; = "https://appassets.androidplatform.net/assets/www/index.html"

.field private web:Landroid/webkit/WebView;


.method public constructor <init>()V
    .registers 1
    invoke-direct {p0}, Landroid/app/Activity;-><init>()V
    return-void
.end method


.method static startUrl(Landroid/content/Intent;)Ljava/lang/String;
    .registers 4
    # p0 = intent (may be null)
    const-string v0, "https://appassets.androidplatform.net/assets/www/index.html"
    if-eqz p0, :done
    const-string v1, "query"
    invoke-virtual {p0, v1}, Landroid/content/Intent;->getStringExtra(Ljava/lang/String;)Ljava/lang/String;
    move-result-object v1
    if-eqz v1, :done
    new-instance v2, Ljava/lang/StringBuilder;
    invoke-direct {v2, v0}, Ljava/lang/StringBuilder;-><init>(Ljava/lang/String;)V
    const-string v0, "?"
    invoke-virtual {v2, v0}, Ljava/lang/StringBuilder;->append(Ljava/lang/String;)Ljava/lang/StringBuilder;
    invoke-virtual {v2, v1}, Ljava/lang/StringBuilder;->append(Ljava/lang/String;)Ljava/lang/StringBuilder;
    invoke-virtual {v2}, Ljava/lang/StringBuilder;->toString()Ljava/lang/String;
    move-result-object v0
    :done
    return-object v0
.end method


.method protected onCreate(Landroid/os/Bundle;)V
    .registers 5
    # v0 web, v1 settings/objects, v2 scratch; p0 this, p1 saved state
    invoke-super {p0, p1}, Landroid/app/Activity;->onCreate(Landroid/os/Bundle;)V

    const/4 v0, 0x1
    invoke-static {v0}, Landroid/webkit/WebView;->setWebContentsDebuggingEnabled(Z)V

    new-instance v0, Landroid/webkit/WebView;
    invoke-direct {v0, p0}, Landroid/webkit/WebView;-><init>(Landroid/content/Context;)V
    iput-object v0, p0, Lorg/cogenesis/edge/demo/MainActivity;->web:Landroid/webkit/WebView;

    invoke-virtual {v0}, Landroid/webkit/WebView;->getSettings()Landroid/webkit/WebSettings;
    move-result-object v1
    const/4 v2, 0x1
    invoke-virtual {v1, v2}, Landroid/webkit/WebSettings;->setJavaScriptEnabled(Z)V
    invoke-virtual {v1, v2}, Landroid/webkit/WebSettings;->setDomStorageEnabled(Z)V
    const/4 v2, 0x0
    invoke-virtual {v1, v2}, Landroid/webkit/WebSettings;->setAllowFileAccess(Z)V
    invoke-virtual {v1, v2}, Landroid/webkit/WebSettings;->setAllowContentAccess(Z)V
    # WebSettings.MIXED_CONTENT_ALWAYS_ALLOW == 0
    invoke-virtual {v1, v2}, Landroid/webkit/WebSettings;->setMixedContentMode(I)V

    new-instance v1, Lorg/cogenesis/edge/demo/AssetServer;
    invoke-direct {v1, p0}, Lorg/cogenesis/edge/demo/AssetServer;-><init>(Landroid/content/Context;)V
    invoke-virtual {v0, v1}, Landroid/webkit/WebView;->setWebViewClient(Landroid/webkit/WebViewClient;)V

    new-instance v1, Landroid/webkit/WebChromeClient;
    invoke-direct {v1}, Landroid/webkit/WebChromeClient;-><init>()V
    invoke-virtual {v0, v1}, Landroid/webkit/WebView;->setWebChromeClient(Landroid/webkit/WebChromeClient;)V

    invoke-virtual {p0, v0}, Lorg/cogenesis/edge/demo/MainActivity;->setContentView(Landroid/view/View;)V

    invoke-virtual {p0}, Lorg/cogenesis/edge/demo/MainActivity;->getIntent()Landroid/content/Intent;
    move-result-object v1
    invoke-static {v1}, Lorg/cogenesis/edge/demo/MainActivity;->startUrl(Landroid/content/Intent;)Ljava/lang/String;
    move-result-object v1
    invoke-virtual {v0, v1}, Landroid/webkit/WebView;->loadUrl(Ljava/lang/String;)V
    return-void
.end method


.method protected onNewIntent(Landroid/content/Intent;)V
    .registers 4
    invoke-super {p0, p1}, Landroid/app/Activity;->onNewIntent(Landroid/content/Intent;)V
    invoke-virtual {p0, p1}, Lorg/cogenesis/edge/demo/MainActivity;->setIntent(Landroid/content/Intent;)V
    if-eqz p1, :done
    const-string v0, "query"
    invoke-virtual {p1, v0}, Landroid/content/Intent;->getStringExtra(Ljava/lang/String;)Ljava/lang/String;
    move-result-object v0
    if-eqz v0, :done
    iget-object v0, p0, Lorg/cogenesis/edge/demo/MainActivity;->web:Landroid/webkit/WebView;
    if-eqz v0, :done
    invoke-static {p1}, Lorg/cogenesis/edge/demo/MainActivity;->startUrl(Landroid/content/Intent;)Ljava/lang/String;
    move-result-object v1
    invoke-virtual {v0, v1}, Landroid/webkit/WebView;->loadUrl(Ljava/lang/String;)V
    :done
    return-void
.end method


.method public onBackPressed()V
    .registers 3
    iget-object v0, p0, Lorg/cogenesis/edge/demo/MainActivity;->web:Landroid/webkit/WebView;
    if-eqz v0, :super
    invoke-virtual {v0}, Landroid/webkit/WebView;->canGoBack()Z
    move-result v1
    if-eqz v1, :super
    invoke-virtual {v0}, Landroid/webkit/WebView;->goBack()V
    return-void
    :super
    invoke-super {p0}, Landroid/app/Activity;->onBackPressed()V
    return-void
.end method


.method protected onDestroy()V
    .registers 3
    iget-object v0, p0, Lorg/cogenesis/edge/demo/MainActivity;->web:Landroid/webkit/WebView;
    if-eqz v0, :super
    invoke-virtual {v0}, Landroid/webkit/WebView;->destroy()V
    const/4 v1, 0x0
    iput-object v1, p0, Lorg/cogenesis/edge/demo/MainActivity;->web:Landroid/webkit/WebView;
    :super
    invoke-super {p0}, Landroid/app/Activity;->onDestroy()V
    return-void
.end method
