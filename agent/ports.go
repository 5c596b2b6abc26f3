package agent

import (
	"fmt"
	"net"
	"strconv"
	"sync"
)

// portAllocator hands out host ports from a range: ports not given to
// another instance of this agent and free on the host when handed out.
type portAllocator struct {
	host     string
	min, max int

	mu   sync.Mutex
	next int
	used map[int]bool
}

func newPortAllocator(host string, lo, hi int) *portAllocator {
	return &portAllocator{host: host, min: lo, max: hi, next: lo, used: map[int]bool{}}
}

// claim marks ports as taken (by re-adopted instances).
func (p *portAllocator) claim(ports ...int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, port := range ports {
		p.used[port] = true
	}
}

// release gives ports back.
func (p *portAllocator) release(ports ...int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, port := range ports {
		delete(p.used, port)
	}
}

// alloc hands out n ports, preferred[i] for the i-th when it is in range
// and free.
func (p *portAllocator) alloc(n int, preferred []int) ([]int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]int, 0, n)
	fail := func(err error) ([]int, error) {
		for _, port := range out {
			delete(p.used, port)
		}
		return nil, err
	}
	for i := range n {
		if i < len(preferred) {
			if port := preferred[i]; port >= p.min && port <= p.max && !p.used[port] && p.free(port) {
				p.used[port] = true
				out = append(out, port)
				continue
			}
		}
		port, ok := p.scan()
		if !ok {
			return fail(fmt.Errorf("no free host port left in %d..%d", p.min, p.max))
		}
		p.used[port] = true
		out = append(out, port)
	}
	return out, nil
}

// scan finds the next free port after the last one handed out.
func (p *portAllocator) scan() (int, bool) {
	size := p.max - p.min + 1
	for range size {
		port := p.next
		p.next++
		if p.next > p.max {
			p.next = p.min
		}
		if !p.used[port] && p.free(port) {
			return port, true
		}
	}
	return 0, false
}

// free reports whether nothing on the host listens on port (on any
// address: instances typically listen on all of them).
func (p *portAllocator) free(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	if p.host != "" {
		ln, err := net.Listen("tcp", net.JoinHostPort(p.host, strconv.Itoa(port)))
		if err != nil {
			return false
		}
		ln.Close()
	}
	return true
}
