// Package e2e holds the end-to-end tests of the chat demo (../main.go): they
// build the demo with `go build ./_example`, run it as separate processes and
// talk to it from a headless Chromium (chromedp) and from a raw WebSocket
// client, against the embedded Redis or a redis-server the test starts.
//
// It is a module of its own so that the root module never requires chromedp;
// the go.work at the repository root lets `go test ./... ./_example
// ./_example/e2e` run everything from the root.
//
// Environment:
//
//	CHAT_REQUIRE_BROWSER=1  fail instead of skipping when no Chromium is found
//	CHAT_REQUIRE_REDIS=1    fail instead of skipping when redis-server is missing
//	CHAT_CHROMIUM=path      the browser to use (default: chromium on $PATH, then /usr/bin/chromium)
//	CHAT_DEMO_SCREENSHOT=f  also write a 900×600 screenshot of the demo page to f (docs/demo.png)
//
// Screenshots go to t.ArtifactDir(); run `go test -artifacts -outputdir DIR` to keep them.
package e2e
