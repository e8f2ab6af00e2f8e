package chat_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chatrelay/chat"
	"github.com/redis/go-redis/v9"
	"golang.org/x/net/websocket"
)

// Every line the Handler logs carries instance=<InstanceID>, so the lines of
// many instances can share one log stream.
func ExampleWithLogger() {
	mr, pub, sub := redisPair()
	defer mr.Close()

	var out strings.Builder // os.Stderr, say
	logger := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{
		Level: slog.LevelInfo, // slog.LevelDebug adds a line per connection
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key != slog.LevelKey && a.Key != slog.MessageKey && a.Key != "instance" {
				return slog.Attr{} // only to keep this example's output stable
			}
			return a
		},
	}))
	h := chat.New(pub, sub, chat.WithLogger(logger), chat.WithInstanceID("pod-7"))
	h.Shutdown(context.Background())
	first, _, _ := strings.Cut(out.String(), "\n")
	fmt.Println(first)
	// Output:
	// level=INFO msg="chat instance started" instance=pod-7
}

// A stable instance ID, such as the pod's name, names the instance in log
// lines and in the "instance" field of every message it relays from its
// clients (or from Publish).
func ExampleWithInstanceID() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithInstanceID("pod-7")) // os.Getenv("POD_NAME"), say
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	alice := dial(srv, "?room=lobby&user=alice")
	defer alice.Close()
	send(alice, map[string]string{"type": "message", "room": "lobby", "text": "hi"})
	m := receive(alice)
	fmt.Println(h.InstanceID(), m.Instance)
	// Output:
	// pod-7 pod-7
}

// A room is active while its key lives: every message and every member
// refreshes it, and it expires after the room TTL without either.
func ExampleWithRoomTTL() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithRoomTTL(time.Minute))
	defer h.Shutdown(context.Background())
	ctx := context.Background()

	if err := h.Publish(ctx, "lobby", "bot", "anyone here?"); err != nil {
		log.Fatal(err)
	}
	fmt.Println(mr.TTL("chat:room:{lobby}"))
	active, _ := h.RoomActive(ctx, "lobby")
	fmt.Println("active:", active)

	mr.FastForward(time.Minute) // a minute without a message or a member
	active, _ = h.RoomActive(ctx, "lobby")
	fmt.Println("active a minute later:", active)
	// Output:
	// 1m0s
	// active: true
	// active a minute later: false
}

// A prefix keeps several applications (or environments) apart on one Redis:
// Handlers with different prefixes never see each other's rooms.
func ExampleWithKeyPrefix() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithKeyPrefix("staging:chat:"))
	defer h.Shutdown(context.Background())

	if err := h.Publish(context.Background(), "lobby", "bot", "hi"); err != nil {
		log.Fatal(err)
	}
	fmt.Println(mr.Keys()) // the channel is staging:chat:msg:{lobby}
	// Output:
	// [staging:chat:hist:{lobby} staging:chat:room:{lobby}]
}

// The hook maps the upgrade request to a user, here through a session
// cookie (browsers cannot set headers on a WebSocket upgrade). With a hook,
// ?user= is ignored: clients cannot pick their name.
func ExampleWithAuthenticate() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	sessions := map[string]string{"s3cr3t": "alice"} // your session store
	h := chat.New(pub, sub, chat.WithAuthenticate(func(r *http.Request) (string, error) {
		c, err := r.Cookie("session")
		if err != nil {
			return "", err
		}
		user, ok := sessions[c.Value]
		if !ok {
			return "", errors.New("unknown session")
		}
		return user, nil
	}))
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	_, err := websocket.Dial(wsURL(srv, "?room=lobby&user=alice"), "", srv.URL)
	var refused *websocket.DialError
	if errors.As(err, &refused) {
		fmt.Println("without a session:", refused.Err) // HTTP 401, no upgrade
	}
	ws := dial(srv, "?room=lobby&user=mallory", "Cookie", "session=s3cr3t")
	defer ws.Close()
	send(ws, map[string]string{"type": "message", "room": "lobby", "text": "hi"})
	fmt.Println("with one, messages come from", receive(ws).User)
	// Output:
	// without a session: bad status
	// with one, messages come from alice
}

// Pages on the Handler's own host may always connect; pages elsewhere only
// when their origin is listed. Clients without an Origin header (not
// browsers) are not concerned.
func ExampleWithAllowedOrigins() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithAllowedOrigins("https://app.example.com"))
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	for _, origin := range []string{"https://app.example.com", "https://evil.example"} {
		ws, err := websocket.Dial(wsURL(srv, "?room=lobby"), "", origin)
		if err != nil {
			fmt.Println(origin, "refused") // HTTP 403
			continue
		}
		ws.Close()
		fmt.Println(origin, "allowed")
	}
	// Output:
	// https://app.example.com allowed
	// https://evil.example refused
}

// The limit is on the text of a message, in bytes. A client that sends more
// gets a too_large error and stays connected; Publish returns ErrTooLarge.
func ExampleWithMaxMessageBytes() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithMaxMessageBytes(280))
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	ws := dial(srv, "?room=lobby")
	defer ws.Close()
	send(ws, map[string]string{"type": "message", "room": "lobby", "text": strings.Repeat("a", 281), "ref": "c1"})
	f := receive(ws)
	fmt.Println(f.Type, f.Code, f.Ref)

	err := h.Publish(context.Background(), "lobby", "bot", strings.Repeat("a", 281))
	fmt.Println(errors.Is(err, chat.ErrTooLarge))
	// Output:
	// error too_large c1
	// true
}

// The send queue is a byte budget per connection (default 1 MiB of queued
// frames). A client that falls further behind is closed with 1013 so that
// it never slows anyone else. Rooms with bursts of large messages want more.
func ExampleWithSendQueue() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub,
		chat.WithSendQueue(4<<20),        // bytes: 4 MiB per connection
		chat.WithMaxMessageBytes(64<<10), // texts of up to 64 KiB
	)
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	ws := dial(srv, "?room=photos")
	defer ws.Close()
	big := strings.Repeat("x", 60<<10)
	for range 40 { // a 2.4 MB burst while the client reads nothing
		if err := h.Publish(context.Background(), "photos", "bot", big); err != nil {
			log.Fatal(err)
		}
	}
	n := 0
	for range 40 {
		if receive(ws).Type == "message" {
			n++
		}
	}
	fmt.Println("received", n)
	// Output:
	// received 40
}

// One message per second, in bursts of two: the third message in a row is
// answered rate_limited (with its ref) and not published. The limit counts
// every frame a client sends, joins and leaves included.
func ExampleWithRateLimit() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithRateLimit(1, 2))
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	ws := dial(srv, "?room=lobby") // rooms named at connect are not frames
	defer ws.Close()
	for _, ref := range []string{"c1", "c2", "c3"} {
		send(ws, map[string]string{"type": "message", "room": "lobby", "text": "spam", "ref": ref})
	}
	got := map[string]string{} // ref → frame type or error code
	for range 3 {
		f := receive(ws) // the error may overtake the messages' trip through Redis
		got[f.Ref] = f.Type + " " + f.Code
	}
	for _, ref := range slices.Sorted(maps.Keys(got)) {
		fmt.Println(ref, strings.TrimSpace(got[ref]))
	}
	// Output:
	// c1 message
	// c2 message
	// c3 error rate_limited
}

// A connection may be in at most n rooms at once; one more join is answered
// too_many_rooms, and the connection stays in the others.
func ExampleWithMaxRooms() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithMaxRooms(2))
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	ws := dial(srv, "?room=lobby&room=random")
	defer ws.Close()
	send(ws, map[string]string{"type": "join", "room": "music", "ref": "j1"})
	f := receive(ws)
	fmt.Println(f.Type, f.Code, f.Ref)
	// Output:
	// error too_many_rooms j1
}

// Behind a proxy that cuts connections idle for 30 s, ping more often:
//
//	chat.WithTimeouts(10*time.Second, 30*time.Second, 0) // 0: the default write timeout
//
// Here, much shorter, to watch a peer that answers no ping being dropped.
func ExampleWithTimeouts() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithTimeouts(100*time.Millisecond, 500*time.Millisecond, 0))
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	ws := dial(srv, "?room=lobby")
	defer ws.Close()
	fmt.Println("connections:", h.Stats().Connections)
	time.Sleep(1500 * time.Millisecond) // reading nothing, this client answers no ping
	fmt.Println("connections 1.5 s later:", h.Stats().Connections)
	// Output:
	// connections: 1
	// connections 1.5 s later: 0
}

// The Handler serves at most n connections; the next upgrade is refused
// with HTTP 503 before any work is done for it.
func ExampleWithMaxConnections() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithMaxConnections(1))
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	first := dial(srv, "?room=lobby")
	defer first.Close()
	_, err := websocket.Dial(wsURL(srv, "?room=lobby"), "", srv.URL)
	fmt.Println(err != nil, h.Stats().ConnectionsRefused)
	// Output:
	// true 1
}

// Redis keeps each room's last n messages; a join can ask for them, and a
// client that reconnects gets what it missed.
func ExampleWithHistory() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithHistory(2))
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, text := range []string{"one", "two", "three"} {
		if err := h.Publish(context.Background(), "lobby", "bot", text); err != nil {
			log.Fatal(err)
		}
	}

	ws := dial(srv, "")
	defer ws.Close()
	join := map[string]any{"type": "join", "room": "lobby", "history": 10}
	if err := websocket.JSON.Send(ws, join); err != nil {
		log.Fatal(err)
	}
	var joined struct {
		Seq      int
		Messages []struct {
			Seq  int
			Text string
		}
	}
	if err := websocket.JSON.Receive(ws, &joined); err != nil {
		log.Fatal(err)
	}
	fmt.Println("the room is at seq", joined.Seq)
	for _, m := range joined.Messages {
		fmt.Println(m.Seq, m.Text)
	}
	// Output:
	// the room is at seq 3
	// 2 two
	// 3 three
}

// Where a user may go: here rooms named staff-* are for admins. A refused
// join is answered forbidden, and the client is never subscribed.
func ExampleWithAuthorize() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithAuthorize(func(ctx context.Context, user, room string) error {
		if strings.HasPrefix(room, "staff-") && !strings.HasPrefix(user, "admin") {
			return errors.New("staff only")
		}
		return nil
	}))
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	ws := dial(srv, "?user=bob")
	defer ws.Close()
	send(ws, map[string]string{"type": "join", "room": "staff-ops", "ref": "j1"})
	f := receive(ws)
	fmt.Println(f.Type, f.Code, f.Ref)
	// Output:
	// error forbidden j1
}

// Moderation before publish: the hook may rewrite the text, which every
// member then gets, or refuse the message.
func ExampleWithOnMessage() {
	mr, pub, sub := redisPair()
	defer mr.Close()
	h := chat.New(pub, sub, chat.WithOnMessage(func(ctx context.Context, m *chat.Message) error {
		if strings.Contains(m.Text, "http://") {
			return errors.New("no links, please")
		}
		m.Text = strings.ReplaceAll(m.Text, "darn", "d**n")
		return nil
	}))
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	ws := dial(srv, "?room=lobby")
	defer ws.Close()
	send(ws, map[string]string{"type": "message", "room": "lobby", "text": "darn it"})
	fmt.Println(receive(ws).Text)
	send(ws, map[string]string{"type": "message", "room": "lobby", "text": "see http://x", "ref": "m2"})
	f := receive(ws)
	fmt.Println(f.Code, f.Ref)
	// Output:
	// d**n it
	// forbidden m2
}

// Two cluster clients give sharded Pub/Sub (Redis 7): each room's messages
// stay on the master that owns its slot. A Redis 6 cluster has no sharded
// Pub/Sub: keep classic Pub/Sub there. (An embedded Redis stands in for the
// cluster here, answering CLUSTER SLOTS as a single node.)
func ExampleWithClassicPubSub() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	addrs := []string{mr.Addr()} // the cluster's nodes, or some of them
	pub := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	sub := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer pub.Close()
	defer sub.Close()
	h := chat.New(pub, sub, chat.WithClassicPubSub())
	defer h.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	alice := dial(srv, "?room=lobby&user=alice")
	defer alice.Close()
	send(alice, map[string]string{"type": "message", "room": "lobby", "text": "hi"})
	fmt.Println(receive(alice).Text)
	// Output:
	// hi
}
