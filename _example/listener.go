package main

import (
	"net"
	"sync"
)

// perIPListener caps the connections open at once from one remote IP
// address: over the cap, a new connection is closed as soon as it is
// accepted, before a byte is read. It suits a server that faces clients
// directly; behind a reverse proxy every connection comes from the proxy's
// address, and the proxy is the place for such a limit.
type perIPListener struct {
	net.Listener
	max int

	mu   sync.Mutex
	open map[string]int
}

func limitPerIP(l net.Listener, max int) net.Listener {
	if max <= 0 {
		return l
	}
	return &perIPListener{Listener: l, max: max, open: make(map[string]int)}
}

func (l *perIPListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		l.mu.Lock()
		admitted := l.open[ip] < l.max
		if admitted {
			l.open[ip]++
		}
		l.mu.Unlock()
		if admitted {
			return &countedConn{Conn: c, release: func() { l.release(ip) }}, nil
		}
		c.Close()
	}
}

func (l *perIPListener) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[ip]--; l.open[ip] <= 0 {
		delete(l.open, ip)
	}
}

func remoteIP(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// countedConn gives its place back once, when it is first closed; a
// WebSocket's connection is closed by the chat Handler, after the hijack.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
