package main

import (
	"io"
	"net"
	"testing"
	"time"
)

// A third connection from an address that has two open is closed at once;
// once one of the two closes, a new one is served again.
func TestLimitPerIP(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := limitPerIP(inner, 2)
	defer ln.Close()
	served := make(chan net.Conn)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(served)
				return
			}
			served <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	dial()
	first, second := <-served, <-served
	_ = second

	third := dial()
	_ = third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := third.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("third connection: read %d bytes, %v; want it closed (EOF)", n, err)
	}
	select {
	case c := <-served:
		t.Fatalf("third connection served: %v", c.RemoteAddr())
	default:
	}

	first.Close()
	dial()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("no connection served after a place was freed")
	}
}
