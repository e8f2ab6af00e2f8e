package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chat"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/net/websocket"
)

// TestMetricsEndpoint runs one demo instance on miniredis, makes a
// connection that joins a room, sends a message and a bad frame, then
// scrapes /metrics over HTTP and checks the samples with the Prometheus
// text parser: one connection, one message, one bad frame.
func TestMetricsEndpoint(t *testing.T) {
	in := serveTestInstance(t, settings{rate: 20, maxConns: 100})

	ws, err := websocket.Dial("ws"+strings.TrimPrefix(in.url, "http")+"/chat?room=lobby&user=alice", "", in.url)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetDeadline(time.Now().Add(5 * time.Second))
	var f struct{ Type, Room, Text, Code string }
	receive := func(want string) {
		t.Helper()
		for f.Type = "user_joined"; f.Type == "user_joined"; { // past presence notices
			f.Type = ""
			if err := websocket.JSON.Receive(ws, &f); err != nil {
				t.Fatalf("want a %q frame: %v", want, err)
			}
		}
		if f.Type != want {
			t.Fatalf("want a %q frame, got %+v", want, f)
		}
	}
	receive("joined")
	if err := websocket.JSON.Send(ws, map[string]string{"type": "message", "room": "lobby", "text": "hi"}); err != nil {
		t.Fatal(err)
	}
	receive("message") // back through Redis: published and delivered
	if err := websocket.Message.Send(ws, `{"type":"nope"}`); err != nil {
		t.Fatal(err)
	}
	receive("error") // bad_request

	// The publisher counts the message when Redis's reply reaches it, which
	// can be after the message itself came back.
	for deadline := time.Now().Add(5 * time.Second); in.h.Stats().MessagesPublished == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	got := scrape(t, in.url+"/metrics")
	want := map[string]float64{
		"chat_connections": 1,
		"chat_rooms":       1,
		"chat_instance_info{instance_id=" + in.h.InstanceID() + "}": 1,
		"chat_connections_accepted_total":                           1,
		"chat_connections_refused_total":                            0,
		"chat_messages_published_total":                             1,
		"chat_deliveries_total":                                     1,
		"chat_dropped_total{reason=slow_client}":                    0,
		"chat_dropped_total{reason=rate_limited}":                   0,
		"chat_dropped_total{reason=bad_frame}":                      1,
		"chat_dropped_total{reason=unavailable}":                    0,
		"chat_dropped_total{reason=forbidden}":                      0,
		"chat_redis_errors_total":                                   0,
		"chat_subscription_reconnects_total":                        0,
		"chat_gap_fills_total":                                      0,
	}
	for name, v := range want {
		if g, ok := got[name]; !ok || g != v {
			t.Errorf("%s = %v (present: %v), want %v", name, g, ok, v)
		}
	}
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("go_goroutines missing: the Go collector is not registered")
	}
	if t.Failed() {
		t.Logf("scraped: %v", got)
	}
}

// scrape GETs a /metrics URL and returns every sample of the text format as
// name{label=value,…} → value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("GET %s: Content-Type %q, want the text format", url, ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	samples := make(map[string]float64)
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			key := name
			if len(m.GetLabel()) > 0 {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, l.GetName()+"="+l.GetValue())
				}
				key += "{" + strings.Join(ls, ",") + "}"
			}
			samples[key] = value(mf.GetType(), m)
		}
	}
	return samples
}

func value(typ dto.MetricType, m *dto.Metric) float64 {
	switch typ {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_UNTYPED:
		return m.GetUntyped().GetValue()
	}
	return -1 // summaries and histograms (Go runtime metrics) are not checked
}

// TestStatsCollector pins the exposition: every Stats field under its
// metric name, type and labels, each with a distinct value.
func TestStatsCollector(t *testing.T) {
	c := newStatsCollector("abc123", func() chat.Stats {
		return chat.Stats{
			Connections: 3, Rooms: 2, ConnectionsAccepted: 10, ConnectionsRefused: 9,
			MessagesPublished: 20, Deliveries: 30,
			Dropped:     chat.Drops{SlowClients: 1, RateLimited: 4, BadFrames: 5, Unavailable: 6, Forbidden: 12},
			RedisErrors: 7, SubscriptionReconnects: 8, GapFills: 11,
		}
	})
	const want = `
# HELP chat_connections WebSocket connections open now.
# TYPE chat_connections gauge
chat_connections 3
# HELP chat_connections_accepted_total WebSocket upgrades served.
# TYPE chat_connections_accepted_total counter
chat_connections_accepted_total 10
# HELP chat_connections_refused_total WebSocket upgrades refused with HTTP 503: the connection cap was reached.
# TYPE chat_connections_refused_total counter
chat_connections_refused_total 9
# HELP chat_deliveries_total Message frames queued for local members.
# TYPE chat_deliveries_total counter
chat_deliveries_total 30
# HELP chat_dropped_total Frames and connections the chat server refused or gave up on, by reason.
# TYPE chat_dropped_total counter
chat_dropped_total{reason="bad_frame"} 5
chat_dropped_total{reason="forbidden"} 12
chat_dropped_total{reason="rate_limited"} 4
chat_dropped_total{reason="slow_client"} 1
chat_dropped_total{reason="unavailable"} 6
# HELP chat_gap_fills_total Rooms whose members got from the history what a lost subscription missed, or were told it could not be.
# TYPE chat_gap_fills_total counter
chat_gap_fills_total 11
# HELP chat_instance_info Always 1; instance_id is the chat instance ID, as on its log lines and messages.
# TYPE chat_instance_info gauge
chat_instance_info{instance_id="abc123"} 1
# HELP chat_messages_published_total Messages Redis accepted from this instance (clients' and Publish's).
# TYPE chat_messages_published_total counter
chat_messages_published_total 20
# HELP chat_redis_errors_total Failed Redis commands: publishes, subscriptions, activity keys.
# TYPE chat_redis_errors_total counter
chat_redis_errors_total 7
# HELP chat_rooms Rooms with a member or a pending join on this instance now.
# TYPE chat_rooms gauge
chat_rooms 2
# HELP chat_subscription_reconnects_total Times the Redis subscription connection was lost or replaced.
# TYPE chat_subscription_reconnects_total counter
chat_subscription_reconnects_total 8
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c); n != 15 {
		t.Errorf("%d samples, want 15", n)
	}
}
