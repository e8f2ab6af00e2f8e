package main

import (
	"net/http"

	"github.com/chatrelay/chat"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// statsMetric maps one field of chat.Stats to one Prometheus sample.
type statsMetric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	label string // the value of desc's only variable label, if it has one
	value func(chat.Stats) float64
}

// statsCollector is a prometheus.Collector that reads a Handler's Stats at
// scrape time and reports them as constant metrics: the library keeps the
// counters, and nothing here has to be updated on the hot path.
type statsCollector struct {
	stats   func() chat.Stats
	metrics []statsMetric
	info    *prometheus.Desc
	id      string
}

func newStatsCollector(id string, stats func() chat.Stats) *statsCollector {
	counter := func(name, help string, v func(chat.Stats) uint64) statsMetric {
		return statsMetric{
			desc:  prometheus.NewDesc(name, help, nil, nil),
			typ:   prometheus.CounterValue,
			value: func(s chat.Stats) float64 { return float64(v(s)) },
		}
	}
	gauge := func(name, help string, v func(chat.Stats) int) statsMetric {
		return statsMetric{
			desc:  prometheus.NewDesc(name, help, nil, nil),
			typ:   prometheus.GaugeValue,
			value: func(s chat.Stats) float64 { return float64(v(s)) },
		}
	}
	dropped := prometheus.NewDesc("chat_dropped_total",
		"Frames and connections the chat server refused or gave up on, by reason.", []string{"reason"}, nil)
	drop := func(reason string, v func(chat.Drops) uint64) statsMetric {
		return statsMetric{
			desc:  dropped,
			typ:   prometheus.CounterValue,
			label: reason,
			value: func(s chat.Stats) float64 { return float64(v(s.Dropped)) },
		}
	}
	return &statsCollector{
		stats: stats,
		id:    id,
		info: prometheus.NewDesc("chat_instance_info",
			"Always 1; instance_id is the chat instance ID, as on its log lines and messages.", []string{"instance_id"}, nil),
		metrics: []statsMetric{
			gauge("chat_connections", "WebSocket connections open now.",
				func(s chat.Stats) int { return s.Connections }),
			gauge("chat_rooms", "Rooms with a member or a pending join on this instance now.",
				func(s chat.Stats) int { return s.Rooms }),
			counter("chat_connections_accepted_total", "WebSocket upgrades served.",
				func(s chat.Stats) uint64 { return s.ConnectionsAccepted }),
			counter("chat_connections_refused_total", "WebSocket upgrades refused with HTTP 503: the connection cap was reached.",
				func(s chat.Stats) uint64 { return s.ConnectionsRefused }),
			counter("chat_messages_published_total", "Messages Redis accepted from this instance (clients' and Publish's).",
				func(s chat.Stats) uint64 { return s.MessagesPublished }),
			counter("chat_deliveries_total", "Message frames queued for local members.",
				func(s chat.Stats) uint64 { return s.Deliveries }),
			drop("slow_client", func(d chat.Drops) uint64 { return d.SlowClients }),
			drop("rate_limited", func(d chat.Drops) uint64 { return d.RateLimited }),
			drop("bad_frame", func(d chat.Drops) uint64 { return d.BadFrames }),
			drop("unavailable", func(d chat.Drops) uint64 { return d.Unavailable }),
			drop("forbidden", func(d chat.Drops) uint64 { return d.Forbidden }),
			counter("chat_redis_errors_total", "Failed Redis commands: publishes, subscriptions, activity keys.",
				func(s chat.Stats) uint64 { return s.RedisErrors }),
			counter("chat_subscription_reconnects_total", "Times the Redis subscription connection was lost or replaced.",
				func(s chat.Stats) uint64 { return s.SubscriptionReconnects }),
			counter("chat_gap_fills_total", "Rooms whose members got from the history what a lost subscription missed, or were told it could not be.",
				func(s chat.Stats) uint64 { return s.GapFills }),
		},
	}
}

// Describe sends every descriptor once (chat_dropped_total serves four
// samples but is one descriptor).
func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.info
	seen := make(map[*prometheus.Desc]bool)
	for _, m := range c.metrics {
		if !seen[m.desc] {
			seen[m.desc] = true
			ch <- m.desc
		}
	}
}

// Collect takes one Stats snapshot per scrape, so the samples of a scrape
// agree with each other.
func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, c.id)
	s := c.stats()
	for _, m := range c.metrics {
		var labels []string
		if m.label != "" {
			labels = []string{m.label}
		}
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(s), labels...)
	}
}

// metricsHandler serves h's counters, and the Go runtime's and the process's,
// in the Prometheus exposition format. Each instance has its own registry
// and serves it on its own address, so a scrape target is one instance and
// no label has to tell instances apart (Prometheus adds the target's
// "instance" label itself).
func metricsHandler(h *chat.Handler) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newStatsCollector(h.InstanceID(), h.Stats),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
}
