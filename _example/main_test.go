package main

import (
	"net"
	"testing"
	"time"
)

// A -redis that cannot be reached stops the demo at start, with exit
// status 1, instead of serving a chat that cannot relay.
func TestUnreachableRedisFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a port where no Redis answers
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	start := time.Now()
	if code := run("127.0.0.1:0", "redis://"+dead, settings{}); code != 1 {
		t.Fatalf("run with an unreachable Redis returned %d, want 1", code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v to give up, want a few seconds at most", took)
	}
}
