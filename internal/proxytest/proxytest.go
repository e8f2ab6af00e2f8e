// Package proxytest is a TCP proxy for tests that can freeze traffic (a
// connection that goes silent without closing, as when a NAT loses its
// state) or drop every connection. Fault tests put it between a client and
// Redis.
//
// It is test infrastructure: only _test.go files import it, so importers of
// the chat package never compile it.
package proxytest

import (
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy forwards each accepted connection to a target address.
type Proxy struct {
	Addr string // 127.0.0.1:port to dial instead of the target

	target string
	ln     net.Listener
	done   chan struct{} // closed at cleanup
	wg     sync.WaitGroup

	gate   sync.RWMutex  // read-held while a chunk is being written
	frozen bool          // guarded by gate
	below  int           // with frozen: only pairs with an id below this; -1 all. Guarded by gate
	thaw   chan struct{} // closed by Unfreeze; guarded by gate
	nextID int           // id of the next pair; guarded by cmu

	cmu    sync.Mutex
	conns  map[net.Conn]struct{} // both sides of every live pair
	closed bool
}

// Start listens on 127.0.0.1:0 and forwards both directions of every
// accepted connection to target. t.Cleanup closes the listener and all
// connections and waits for every goroutine of the proxy.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxytest.Start: %v", err)
	}
	p := &Proxy{
		Addr:   ln.Addr().String(),
		target: target,
		ln:     ln,
		done:   make(chan struct{}),
		conns:  make(map[net.Conn]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Freeze stops forwarding in both directions on all current and future
// connections while keeping every socket open: at most one chunk per
// direction is held by the proxy, the rest stays in kernel buffers. When
// Freeze returns no further byte is forwarded (it waits for a write already
// under way to finish).
func (p *Proxy) Freeze() { p.freeze(-1) }

// FreezeExisting is Freeze for the connections open now only: they go
// silent while new ones work, like a connection whose NAT state was lost.
func (p *Proxy) FreezeExisting() {
	p.cmu.Lock()
	below := p.nextID
	p.cmu.Unlock()
	p.freeze(below)
}

func (p *Proxy) freeze(below int) {
	p.gate.Lock()
	defer p.gate.Unlock()
	if !p.frozen {
		p.frozen = true
		p.thaw = make(chan struct{})
	}
	p.below = below
}

// Unfreeze resumes forwarding; bytes held meanwhile are delivered in order.
func (p *Proxy) Unfreeze() {
	p.gate.Lock()
	defer p.gate.Unlock()
	if p.frozen {
		p.frozen = false
		close(p.thaw)
	}
}

// DropAll resets (SO_LINGER 0) both sides of every current connection. The
// proxy keeps listening; new connections work (and obey Freeze).
func (p *Proxy) DropAll() {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	for c := range p.conns {
		reset(c)
	}
}

func (p *Proxy) close() {
	p.cmu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.cmu.Unlock()
	close(p.done)
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			select {
			case <-p.done:
				return
			default:
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve dials the target for client conn c and pumps both ways until
// either side fails; then both are closed.
func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	u, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		_ = c.Close()
		return
	}
	id, ok := p.track(c, u)
	if !ok {
		return
	}
	dead := make(chan struct{}) // closed when the first pump ends
	var once sync.Once
	var pumps sync.WaitGroup
	pumps.Add(2)
	for _, dir := range [][2]net.Conn{{u, c}, {c, u}} {
		go func() {
			defer pumps.Done()
			p.pump(dir[0], dir[1], id, dead)
			once.Do(func() { close(dead) })
		}()
	}
	pumps.Wait()
	p.cmu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.cmu.Unlock()
}

// track registers a pair and numbers it, or closes it if the proxy is
// shutting down.
func (p *Proxy) track(a, b net.Conn) (int, bool) {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	if p.closed {
		_ = a.Close()
		_ = b.Close()
		return 0, false
	}
	p.conns[a], p.conns[b] = struct{}{}, struct{}{}
	p.nextID++
	return p.nextID - 1, true
}

// pump copies src to dst, holding chunks while frozen. Any error closes
// both connections so the other pump ends too; dead tells a pump held by
// Freeze that its pair is gone.
func (p *Proxy) pump(dst, src net.Conn, id int, dead <-chan struct{}) {
	defer func() { _ = dst.Close(); _ = src.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if n > 0 && !p.write(dst, buf[:n], id, dead) {
			return
		}
		if rerr != nil {
			return
		}
	}
}

// write writes b to dst once the proxy is not frozen; false means stop.
func (p *Proxy) write(dst net.Conn, b []byte, id int, dead <-chan struct{}) bool {
	for {
		p.gate.RLock()
		if !p.frozen || (p.below >= 0 && id >= p.below) {
			_, err := dst.Write(b)
			p.gate.RUnlock()
			return err == nil
		}
		thaw := p.thaw
		p.gate.RUnlock()
		select {
		case <-thaw:
		case <-dead:
			return false
		case <-p.done:
			return false
		}
	}
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
