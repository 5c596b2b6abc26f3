package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Caller verification. Instances share the host's network, so anything on
// the machine can connect to any slot's service addresses; the address
// alone would only be a claim. Before a connection is carried, the node
// proxy asks the kernel which socket made it (sock_diag, by its address
// pair: the socket's inode) and checks that a process of one of the
// slot's instances — the instance's top process or any of its
// descendants — holds that socket. Only then does the slot's workload
// certificate speak for it. The check costs one netlink round trip and a
// scan of the instance processes' file descriptors, once per connection;
// when instances run as their service's own user (Config.InstanceUIDBase)
// the socket's owner, from the same lookup, settles it.

// maxCallerProcs bounds the processes scanned for one connection.
const maxCallerProcs = 4096

// errNotACaller is a connection no instance of the slot made.
var errNotACaller = errors.New("the connection does not come from an instance of this service")

// diagSocket is what sock_diag says of a socket.
type diagSocket struct{ uid, inode uint32 }

// callerSocket returns the owner and inode of the socket at the other end
// of an accepted loopback connection: one exact sock_diag lookup (not a
// dump, which walks every socket of the machine).
func callerSocket(c net.Conn) (diagSocket, error) {
	remote, ok1 := c.RemoteAddr().(*net.TCPAddr)
	local, ok2 := c.LocalAddr().(*net.TCPAddr)
	if !ok1 || !ok2 || remote.IP.To4() == nil || local.IP.To4() == nil {
		return diagSocket{}, fmt.Errorf("sock_diag: %s -> %s is not an IPv4 TCP connection", c.RemoteAddr(), c.LocalAddr())
	}
	req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, 0)
	req.AddData(&diagRequest{src: remote, dst: local})
	msgs, err := req.Execute(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY)
	if err != nil {
		return diagSocket{}, fmt.Errorf("sock_diag for %s: %w", remote, err)
	}
	if len(msgs) != 1 || len(msgs[0]) < diagMsgInode+4 {
		return diagSocket{}, fmt.Errorf("sock_diag for %s: %d answers", remote, len(msgs))
	}
	m := msgs[0]
	return diagSocket{uid: nl.NativeEndian().Uint32(m[diagMsgUID:]), inode: nl.NativeEndian().Uint32(m[diagMsgInode:])}, nil
}

// diagRequest is an inet_diag_req_v2 naming one IPv4 TCP socket by its
// address pair (linux/inet_diag.h).
type diagRequest struct{ src, dst *net.TCPAddr }

// diagMsgUID and diagMsgInode are the offsets of idiag_uid and
// idiag_inode in an inet_diag_msg: family, state, timer, retrans (4
// bytes), the socket id (48), expires, rqueue, wqueue (12), uid, inode.
const (
	diagMsgUID   = 4 + 48 + 12
	diagMsgInode = diagMsgUID + 4
)

func (r *diagRequest) Len() int { return 56 }

func (r *diagRequest) Serialize() []byte {
	b := make([]byte, 56)
	b[0], b[1] = unix.AF_INET, unix.IPPROTO_TCP
	nl.NativeEndian().PutUint32(b[4:], 0xffffffff) // every state
	binary.BigEndian.PutUint16(b[8:], uint16(r.src.Port))
	binary.BigEndian.PutUint16(b[10:], uint16(r.dst.Port))
	copy(b[12:16], r.src.IP.To4())
	copy(b[28:32], r.dst.IP.To4())
	nl.NativeEndian().PutUint32(b[48:], nl.TCPDIAG_NOCOOKIE)
	nl.NativeEndian().PutUint32(b[52:], nl.TCPDIAG_NOCOOKIE)
	return b
}

// verifyCaller checks that a connection to a slot's service address comes
// from one of the slot's instances.
func (m *mesh) verifyCaller(c net.Conn, s *slot) error {
	if m.cfg.UnverifiedCallers {
		return nil
	}
	sock, err := callerSocket(c)
	if err != nil {
		return err
	}
	if m.d.ServiceUID != nil {
		// Instances run as their service's own user: the socket's owner
		// answers at once.
		if uid, ok := m.d.ServiceUID(s.key); ok {
			if sock.uid == uid {
				return nil
			}
			return fmt.Errorf("%w (the socket belongs to uid %d, the service runs as %d)", errNotACaller, sock.uid, uid)
		}
	}
	var roots []int
	if m.d.PID != nil {
		m.mu.Lock()
		for inst, key := range m.owner {
			if key == s.key {
				if pid := m.d.PID(inst); pid > 0 {
					roots = append(roots, pid)
				}
			}
		}
		m.mu.Unlock()
	}
	if processTreeHolds(roots, "socket:["+strconv.FormatUint(uint64(sock.inode), 10)+"]") {
		return nil
	}
	return errNotACaller
}

// processTreeHolds reports whether a process of the trees rooted at roots
// has a file descriptor whose link is target.
func processTreeHolds(roots []int, target string) bool {
	seen := map[int]bool{}
	queue := append([]int(nil), roots...)
	for len(queue) > 0 && len(seen) < maxCallerProcs {
		pid := queue[0]
		queue = queue[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		dir := "/proc/" + strconv.Itoa(pid)
		if fdsHold(dir+"/fd", target) {
			return true
		}
		queue = append(queue, children(dir)...)
	}
	return false
}

// fdsHold reports whether a /proc/<pid>/fd directory has a descriptor
// linking to target.
func fdsHold(dir, target string) bool {
	d, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer d.Close()
	for {
		names, err := d.Readdirnames(256)
		for _, n := range names {
			if l, err := os.Readlink(dir + "/" + n); err == nil && l == target {
				return true
			}
		}
		if err != nil {
			return false
		}
	}
}

// children lists the children of every thread of a /proc/<pid> process.
func children(dir string) []int {
	d, err := os.Open(dir + "/task")
	if err != nil {
		return nil
	}
	tids, _ := d.Readdirnames(-1)
	d.Close()
	var out []int
	for _, tid := range tids {
		b, err := os.ReadFile(dir + "/task/" + tid + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}
