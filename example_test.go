package chat_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chatrelay/chat"
	"github.com/redis/go-redis/v9"
	"golang.org/x/net/websocket"
)

// Two chat servers share one Redis: a user on the first talks to a user on
// the second. (miniredis stands in for a real Redis here.)
func Example() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()

	quiet := slog.New(slog.DiscardHandler)
	server := func() (*chat.Handler, *httptest.Server) {
		pub := redis.NewClient(&redis.Options{Addr: mr.Addr()}) // PUBLISH and keys
		sub := redis.NewClient(&redis.Options{Addr: mr.Addr()}) // SUBSCRIBE only
		h := chat.New(pub, sub, chat.WithLogger(quiet))
		mux := http.NewServeMux()
		mux.Handle("/chat", h)
		return h, httptest.NewServer(mux)
	}
	h1, srv1 := server()
	h2, srv2 := server()
	defer srv1.Close()
	defer srv2.Close()
	defer h1.Shutdown(context.Background())
	defer h2.Shutdown(context.Background())

	connect := func(srv *httptest.Server, user string) *websocket.Conn {
		url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/chat?room=lobby&user=" + user
		ws, err := websocket.Dial(url, "", srv.URL)
		if err != nil {
			log.Fatal(err)
		}
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		var joined map[string]any
		websocket.JSON.Receive(ws, &joined) // {"type":"joined","room":"lobby"}
		return ws
	}
	alice := connect(srv1, "alice")
	bob := connect(srv2, "bob")
	defer alice.Close()
	defer bob.Close()

	websocket.JSON.Send(alice, map[string]string{"type": "message", "room": "lobby", "text": "hi bob"})
	var m struct{ Type, Room, User, Text string }
	next := func(ws *websocket.Conn) { // the next message, past presence notices
		for m.Type = ""; m.Type != "message"; {
			websocket.JSON.Receive(ws, &m)
		}
	}
	next(bob)
	fmt.Printf("bob got %s from %s in %s\n", m.Text, m.User, m.Room)
	next(alice) // the sender's copy comes back through Redis too
	fmt.Printf("alice got %s from %s\n", m.Text, m.User)
	// Output:
	// bob got hi bob from alice in lobby
	// alice got hi bob from alice
}

// The chat.js browser client, served next to the WebSocket endpoint. A page
// then uses it from a module script:
//
//	<script type="module">
//	  import { ChatClient } from "/chat.js";
//	  const c = new ChatClient("/chat", { user: "alice", rooms: ["lobby"] });
//	  c.addEventListener("message", (e) => console.log(e.detail.user, e.detail.text));
//	</script>
func ExampleClientScript() {
	mux := http.NewServeMux()
	mux.Handle("GET /chat.js", chat.ClientScript())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/chat.js")
	if err != nil {
		log.Fatal(err)
	}
	js, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.Status, resp.Header.Get("Content-Type"))
	fmt.Println("exports ChatClient:", strings.Contains(string(js), "export class ChatClient"))

	// Browsers revalidate it on every load: a 304 until the server is upgraded.
	req, _ := http.NewRequest("GET", srv.URL+"/chat.js", nil)
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status)
	// Output:
	// 200 OK text/javascript; charset=utf-8
	// exports ChatClient: true
	// 304 Not Modified
}

// The helpers below play the parts that are not this package's: a Redis,
// and the browser on the other end of the WebSocket.

// redisPair starts an embedded Redis (miniredis, standing in for yours) and
// returns two clients of it, as New wants them: pub for PUBLISH and keys,
// sub for SUBSCRIBE only. Close mr when done.
func redisPair() (mr *miniredis.Miniredis, pub, sub *redis.Client) {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	pub, sub = clients(mr)
	return mr, pub, sub
}

// clients returns another pair of clients of mr, for another instance.
func clients(mr *miniredis.Miniredis) (pub, sub *redis.Client) {
	return redis.NewClient(&redis.Options{Addr: mr.Addr()}), redis.NewClient(&redis.Options{Addr: mr.Addr()})
}

// frame is any frame the server sends (see the README's wire protocol).
type frame struct {
	Type, Room, User, Text, Instance string
	Code, Message, Ref               string
}

// wsURL is the WebSocket URL of a Handler mounted at the root of srv, with
// query (such as "?room=lobby").
func wsURL(srv *httptest.Server, query string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/" + query
}

// dial connects a client to the Handler at the root of srv, as a page of
// srv would; see dialURL.
func dial(srv *httptest.Server, query string, header ...string) *websocket.Conn {
	return dialURL(wsURL(srv, query), srv.URL, header...)
}

// dialURL connects a client with the given Origin and waits until every
// room named in the URL's query is joined. header is pairs of request
// header names and values, such as "Cookie", "session=…".
func dialURL(rawURL, origin string, header ...string) *websocket.Conn {
	cfg, err := websocket.NewConfig(rawURL, origin)
	if err != nil {
		log.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		cfg.Header.Set(header[i], header[i+1])
	}
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		log.Fatal(err)
	}
	for range cfg.Location.Query()["room"] {
		if f := receive(ws); f.Type != "joined" {
			log.Fatalf("want joined, got %+v", f)
		}
	}
	return ws
}

// receive reads the next frame, waiting at most 5 s.
func receive(ws *websocket.Conn) frame {
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		var f frame
		if err := websocket.JSON.Receive(ws, &f); err != nil {
			log.Fatal(err)
		}
		if f.Type != "user_joined" && f.Type != "user_left" { // presence notices
			return f
		}
	}
}

// receiveErr reads frames until the connection ends (at most 5 s) and
// returns why.
func receiveErr(ws *websocket.Conn) error {
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		var f frame
		if err := websocket.JSON.Receive(ws, &f); err != nil {
			return err
		}
	}
}

// send sends one client frame.
func send(ws *websocket.Conn, f map[string]string) {
	if err := websocket.JSON.Send(ws, f); err != nil {
		log.Fatal(err)
	}
}
