// Package meshwire is the wire protocol of node proxies, the part of
// every agent that delivers calls to the instances of its machine. Two
// kinds of callers speak it, over TLS 1.3 with client certificates, to a
// machine's mesh port, each naming its protocol with ALPN:
//
//   - other machines' node proxies, for their workloads (MeshALPN): one
//     TLS connection per calling service and machine, multiplexed with
//     yamux, a stream per call;
//   - edges (EdgeALPN): one TLS connection per connection to an instance,
//     no multiplexing, so that an edge's pool of kept-alive connections
//     to an instance is a pool of TLS connections.
//
// Either way a call opens with a preamble naming the destination instance
// and its declared port,
//
//	"MRD1" | len(instance) (1 byte) | instance | port (2 bytes, big endian)
//
// and the node proxy answers with one status byte, followed for a refusal
// by a length byte and a reason. After StatusOK the connection (or
// stream) carries the caller's bytes both ways.
//
// The package holds the format alone; the agent serves it and the edge
// dials it. It imports nothing of Meridian.
package meshwire

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// The protocols a caller names with ALPN.
const (
	// MeshALPN is spoken by node proxies calling for their workloads
	// (yamux sessions of calls).
	MeshALPN = "meridian-mesh/1"
	// EdgeALPN is spoken by edges: one call per TLS connection.
	EdgeALPN = "meridian-edge/1"
)

// Magic opens every preamble.
const Magic = "MRD1"

// PreambleTimeout bounds a node proxy's wait for a caller's TLS
// handshake and preamble.
const PreambleTimeout = 10 * time.Second

// Status is a node proxy's answer to a preamble.
type Status byte

// The statuses.
const (
	StatusOK          Status = 0
	StatusRefused     Status = 1 // the policy refuses the caller: no other endpoint will accept it
	StatusNoInstance  Status = 2 // the instance does not run here (any more)
	StatusUnreachable Status = 3 // the instance does not accept connections on that port
	StatusBadRequest  Status = 4
	StatusExpired     Status = 5 // the caller's certificate expired: connect again with a new one
)

// AppendPreamble appends a call's preamble to b. The instance id must be
// 1 to 255 bytes (the region's ids are far shorter).
func AppendPreamble(b []byte, instance string, port int) []byte {
	b = append(b, Magic...)
	b = append(b, byte(len(instance)))
	b = append(b, instance...)
	return binary.BigEndian.AppendUint16(b, uint16(port))
}

// ReadPreamble reads a call's preamble.
func ReadPreamble(r io.Reader) (instance string, port int, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", 0, fmt.Errorf("reading the preamble: %w", err)
	}
	if string(hdr[:4]) != Magic {
		return "", 0, fmt.Errorf("not a mesh preamble (%q)", hdr[:4])
	}
	rest := make([]byte, int(hdr[4])+2)
	if _, err := io.ReadFull(r, rest); err != nil {
		return "", 0, fmt.Errorf("reading the preamble: %w", err)
	}
	n := len(rest) - 2
	return string(rest[:n]), int(binary.BigEndian.Uint16(rest[n:])), nil
}

// WriteStatus writes a node proxy's answer; a refusal's reason is cut to
// 255 bytes.
func WriteStatus(w io.Writer, code Status, reason string) error {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	b := []byte{byte(code)}
	if code != StatusOK {
		b = append(b, byte(len(reason)))
		b = append(b, reason...)
	}
	_, err := w.Write(b)
	return err
}

// StatusError is a node proxy's refusal.
type StatusError struct {
	Code   Status
	Reason string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("destination refused (status %d): %s", e.Code, e.Reason)
}

// ReadStatus reads a node proxy's answer: nil for StatusOK, a
// *StatusError for a refusal.
func ReadStatus(r io.Reader) error {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return fmt.Errorf("reading the destination's answer: %w", err)
	}
	if Status(b[0]) == StatusOK {
		return nil
	}
	if _, err := io.ReadFull(r, b[1:2]); err != nil {
		return &StatusError{Code: Status(b[0])}
	}
	reason := make([]byte, b[1])
	io.ReadFull(r, reason)
	return &StatusError{Code: Status(b[0]), Reason: string(reason)}
}
