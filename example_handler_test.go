package chat_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"time"

	"github.com/chatrelay/chat"
	"golang.org/x/net/websocket"
)

// A server-side announcement goes through Redis like a client's message:
// members of the room on every instance receive it, in order with the rest.
func ExampleHandler_Publish() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub)
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()
	alice := dial(srv, "?room=lobby&user=alice")
	defer alice.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := h.Publish(ctx, "lobby", "deploy-bot", "new version at 18:00")
	switch {
	case errors.Is(err, chat.ErrUnavailable):
		log.Print("Redis did not take it; try again later")
	case err != nil: // ErrInvalidRoom, ErrTooLarge, …: a bug in the caller
		log.Fatal(err)
	}
	m := receive(alice)
	fmt.Printf("%s in #%s: %s\n", m.User, m.Room, m.Text)
	// Output:
	// deploy-bot in #lobby: new version at 18:00
}

// Whether a room has members or messages on any instance, within the room
// TTL: for example, to send an email instead of a chat message when nobody
// is there. Here one instance asks about a member of another.
func ExampleHandler_RoomActive() {
	mr, pub1, sub1 := redisPair()
	defer mr.Close()
	h1 := chat.New(pub1, sub1)
	defer h1.Shutdown(context.Background())
	pub2, sub2 := clients(mr)
	h2 := chat.New(pub2, sub2)
	defer h2.Shutdown(context.Background())
	srv2 := httptest.NewServer(h2)
	defer srv2.Close()
	ctx := context.Background()

	active, err := h1.RoomActive(ctx, "support")
	if err != nil {
		log.Fatal(err) // ErrUnavailable: Redis did not answer
	}
	fmt.Println("before:", active)
	ws := dial(srv2, "?room=support&user=agent") // a member on the other instance
	defer ws.Close()
	active, _ = h1.RoomActive(ctx, "support")
	fmt.Println("with a member on the other instance:", active)
	// Output:
	// before: false
	// with a member on the other instance: true
}

// Shutdown after the HTTP server's: http.Server.Shutdown stops new
// connections but does not wait for WebSockets (they are hijacked), so
// Handler.Shutdown closes them with 1001 (browsers reconnect, to another
// instance behind a load balancer) and waits for its goroutines.
func ExampleHandler_Shutdown() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub)
	mux := http.NewServeMux()
	mux.Handle("/chat", h)
	srv := &http.Server{Handler: mux}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(ln)
	ws := dialURL("ws://"+ln.Addr().String()+"/chat?room=lobby", "http://"+ln.Addr().String())
	defer ws.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Print(err)
	}
	if err := h.Shutdown(ctx); err != nil {
		log.Print(err) // ctx ended first: the remaining clients were dropped
	}
	fmt.Println("client closed:", receiveErr(ws) != nil)
	fmt.Println(h.Publish(context.Background(), "lobby", "bot", "anyone?"))
	// Output:
	// client closed: true
	// chat: handler shut down
}

// Stats is cheap: read it on every scrape of a metrics endpoint (the demo
// in _example serves it to Prometheus at /metrics) or log it now and then.
func ExampleHandler_Stats() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub)
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()
	ws := dial(srv, "?room=lobby&room=random")
	defer ws.Close()

	s := h.Stats()
	fmt.Println("connections:", s.Connections, "rooms:", s.Rooms)
	// Output:
	// connections: 1 rooms: 2
}

// Without WithInstanceID, each Handler gets 12 random hex digits at New. Tag
// your own responses and log lines with it to tell the instances apart.
func ExampleHandler_InstanceID() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub)
	defer h.Shutdown(context.Background())

	mux := http.NewServeMux()
	mux.Handle("/chat", h)
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Chat-Instance", h.InstanceID())
		fmt.Fprintln(w, "ok")
	})
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/info", nil))
	id := rec.Header().Get("X-Chat-Instance")
	fmt.Println(regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(id))
	// Output:
	// true
}

// A server-side render of a room: its latest messages, oldest first, as
// Redis keeps them (WithHistory), whether or not anyone is in the room here.
func ExampleHandler_History() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub)
	defer h.Shutdown(context.Background())
	ctx := context.Background()
	for _, text := range []string{"first", "second", "third"} {
		if err := h.Publish(ctx, "lobby", "bot", text); err != nil {
			log.Fatal(err)
		}
	}
	msgs, err := h.History(ctx, "lobby", 2)
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range msgs {
		fmt.Println(m.Seq, m.User, m.Text)
	}
	// Output:
	// 2 bot second
	// 3 bot third
}

// A moderator takes a user out of a room on every instance.
func ExampleHandler_Kick() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub)
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()
	mallory := dial(srv, "?room=lobby&user=mallory")
	defer mallory.Close()

	if err := h.Kick(context.Background(), "lobby", "mallory"); err != nil {
		log.Fatal(err)
	}
	var left struct{ Type, Room, Reason string }
	for left.Type != "left" { // past presence notices
		if err := websocket.JSON.Receive(mallory, &left); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println(left.Type, left.Room, left.Reason)
	// Output:
	// left lobby kicked
}

// Who is in a room, on any instance, each user once however many
// connections it has.
func ExampleHandler_Presence() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub)
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, user := range []string{"bob", "alice", "alice"} {
		ws := dial(srv, "?room=lobby&user="+user)
		defer ws.Close()
	}

	ctx := context.Background()
	var users []string
	for len(users) < 2 { // presence is recorded just after the joins
		var err error
		if users, err = h.Presence(ctx, "lobby"); err != nil {
			log.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println(users)
	// Output:
	// [alice bob]
}
