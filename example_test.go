package chat_test

import (
	"context"
	"fmt"
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
	websocket.JSON.Receive(bob, &m)
	fmt.Printf("bob got %s from %s in %s\n", m.Text, m.User, m.Room)
	websocket.JSON.Receive(alice, &m) // the sender's copy comes back through Redis too
	fmt.Printf("alice got %s from %s\n", m.Text, m.User)
	// Output:
	// bob got hi bob from alice in lobby
	// alice got hi bob from alice
}
