package chat_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/chatrelay/chat"
)

func TestClientScript(t *testing.T) {
	srv := httptest.NewServer(chat.ClientScript())
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/chat.js")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: status %d, want 200", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/javascript; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc == "" {
		t.Error("no Cache-Control header")
	}
	if !strings.Contains(string(body), "export class ChatClient extends EventTarget") {
		t.Errorf("body does not export ChatClient (%d bytes)", len(body))
	}
	etag := resp.Header.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag header")
	}

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/chat.js", nil)
	req.Header.Set("If-None-Match", etag)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("GET with If-None-Match: status %d, want 304", resp.StatusCode)
	}

	resp, err = http.Post(srv.URL+"/chat.js", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: status %d, want 405", resp.StatusCode)
	}
}
