package chat

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"time"
)

//go:embed chat.js
var clientScriptJS []byte

// clientScriptETag is a strong validator computed from the embedded file.
var clientScriptETag = func() string {
	sum := sha256.Sum256(clientScriptJS)
	return `"` + hex.EncodeToString(sum[:12]) + `"`
}()

// ClientScript returns an http.Handler that serves chat.js, the browser
// client for this package: a dependency-free ES module exporting ChatClient
// (its JSDoc header documents the API). Mount it next to the WebSocket
// endpoint, for example:
//
//	mux.Handle("/chat", h)
//	mux.Handle("GET /chat.js", chat.ClientScript())
//
// and in the page: import { ChatClient } from "/chat.js".
//
// The script is served with Content-Type text/javascript, an ETag and
// Cache-Control: no-cache, so browsers revalidate it (a cheap 304) and pick
// up a new version as soon as the server is upgraded. GET and HEAD only.
func ClientScript() http.Handler {
	return http.HandlerFunc(serveClientScript)
}

func serveClientScript(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/javascript; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", clientScriptETag)
	h.Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, "chat.js", time.Time{}, bytes.NewReader(clientScriptJS))
}
