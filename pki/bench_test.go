package pki_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki"
)

// BenchmarkIssueLeaf measures issuing one machine certificate from a
// region's intermediate, including P-256 key generation.
func BenchmarkIssueLeaf(b *testing.B) {
	f := newFixture(b)
	req := pki.LeafRequest{ID: pki.MachineID(td, "fra", "m1"), Usage: pki.UsageBoth, TTL: time.Hour, Now: f.now}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.fra.Issue(req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandshake measures a full mutual-TLS 1.3 handshake (new TCP
// connection on 127.0.0.1, both chains verified, both authorizers run)
// between a fra agent and fra's server.
func BenchmarkHandshake(b *testing.B) {
	f := newFixture(b)
	machines, err := pki.RegionMembers(f.fra.Cert, pki.KindMachine)
	if err != nil {
		b.Fatal(err)
	}
	servers, err := pki.RegionMembers(f.fra.Cert, pki.KindServer)
	if err != nil {
		b.Fatal(err)
	}
	srvCfg := pki.ServerConfig(reloader(b, f.issue(b, f.fra, pki.ServerID(td, "fra"), pki.UsageBoth)), f.root.Pool(), machines)
	cliCfg := pki.ClientConfig(reloader(b, f.issue(b, f.fra, pki.MachineID(td, "fra", "m1"), pki.UsageClient)), f.root.Pool(), servers)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return
				}
				_, _ = tc.Write([]byte{1})
				_, _ = io.Copy(io.Discard, tc)
			}()
		}
	}()
	b.Cleanup(func() { ln.Close(); <-done })

	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: ioDeadline}, Config: cliCfg}
	buf := make([]byte, 1)
	b.ReportAllocs()
	for b.Loop() {
		c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		// Reading the server's byte proves it admitted the client cert.
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
