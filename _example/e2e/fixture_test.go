package e2e

// The e2e tests' own helpers; the test doubles they share with the root
// module's tests (WebSocket client, redis-server, demo process) are in
// ../../internal.

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/demotest"
	"github.com/chatrelay/chat/internal/redistest"
	"github.com/chatrelay/chat/internal/wstest"
)

// TestMain reports tests skipped for want of redis-server and removes the
// demo binary the tests build.
func TestMain(m *testing.M) { demotest.Main(m) }

// instanceID asks an instance for its ID (GET /info).
func instanceID(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/info")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var info struct{ Instance string }
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil || info.Instance == "" {
		t.Fatalf("%s/info: %v %+v", base, err, info)
	}
	return info.Instance
}

// dialWS opens a WebSocket to rawURL (ws://host:port/path?query) with the
// page's Origin, as a browser would, and fails the test unless it succeeds.
func dialWS(t *testing.T, rawURL string) *wstest.Conn {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return wstest.MustDial(t, rawURL, http.Header{"Origin": {"http://" + u.Host}})
}

// frame is a server frame, decoded loosely (encoding/json matches the
// field names case-insensitively: "ts" fills TS).
type frame struct {
	Type, Room, ID, User, Text, Instance, Ref, Code, Message string
	TS                                                       int64
	Resumed                                                  bool
}

// expect reads frames until one of the given type arrives (within 10 s);
// an error frame among those passed over, or a close, fails the test.
func expect(t *testing.T, name string, c *wstest.Conn, typ string) frame {
	t.Helper()
	m := c.Next(t, typ, 10*time.Second)
	for _, s := range c.Skipped {
		if s["type"] == "error" {
			t.Fatalf("%s: error frame while waiting for %q: %v", name, typ, s)
		}
		t.Logf("%s: skipped %v", name, s)
	}
	c.Skipped = nil
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: bad frame %s: %v", name, data, err)
	}
	return f
}

// twoDemos starts a redis-server and two demo processes on it, A and B,
// each with its own extra flags; it returns A (to stop or kill it), the two
// addresses and the Redis server.
func twoDemos(t *testing.T, argsA, argsB []string) (a *demotest.Demo, addrA, addrB string, rs *redistest.Server) {
	t.Helper()
	rs = redistest.Start(t)
	redisURL := "redis://" + rs.Addr
	addrA, addrB = demotest.FreeAddr(t), demotest.FreeAddr(t)
	a = demotest.Start(t, "A", []string{addrA}, append([]string{"-redis", redisURL}, argsA...)...)
	demotest.Start(t, "B", []string{addrB}, append([]string{"-redis", redisURL}, argsB...)...)
	return a, addrA, addrB, rs
}
