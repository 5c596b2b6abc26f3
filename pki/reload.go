package pki

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/meridian-run/meridian/clock"
	"log/slog"
	"sync/atomic"
	"time"
)

// Clock is the time source of the renewer (clock.Real() or a test's fake).
type Clock = clock.Clock

// Timer is a one-shot timer made by a Clock.
type Timer = clock.Timer

// RealClock returns the wall clock.
func RealClock() Clock { return clock.Real() }

type current struct {
	leaf *Leaf
	cert *tls.Certificate
}

// Reloader is a CertSource whose certificate can be replaced at any time:
// handshakes after Rotate present the new certificate, while established
// connections and listeners carry on. It is safe for concurrent use.
type Reloader struct {
	cur atomic.Pointer[current]
}

// NewReloader returns a Reloader serving leaf, which must have a key.
func NewReloader(leaf *Leaf) (*Reloader, error) {
	r := &Reloader{}
	if err := r.Rotate(leaf); err != nil {
		return nil, err
	}
	return r, nil
}

// Rotate makes leaf the certificate of new handshakes.
func (r *Reloader) Rotate(leaf *Leaf) error {
	c, err := leaf.TLSCertificate()
	if err != nil {
		return fmt.Errorf("pki: rotate: %w", err)
	}
	r.cur.Store(&current{leaf: leaf, cert: c})
	return nil
}

// Leaf returns the current leaf, or nil before the first Rotate.
func (r *Reloader) Leaf() *Leaf {
	if c := r.cur.Load(); c != nil {
		return c.leaf
	}
	return nil
}

func (r *Reloader) cert() (*tls.Certificate, error) {
	if c := r.cur.Load(); c != nil {
		return c.cert, nil
	}
	return nil, errors.New("pki: reloader has no certificate (use NewReloader)")
}

// GetCertificate implements CertSource for servers.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert()
}

// GetClientCertificate implements CertSource for clients.
func (r *Reloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.cert()
}

// RenewConfig configures Reloader.Renew.
type RenewConfig struct {
	// Clock drives the schedule. Required.
	Clock Clock
	// Before is how long before expiry to renew. Zero means a third of
	// the current certificate's lifetime.
	Before time.Duration
	// Issue obtains a new leaf (from the local CA or over the network).
	// Required.
	Issue func(context.Context) (*Leaf, error)
	// MinBackoff and MaxBackoff bound the wait between failed attempts,
	// doubling from MinBackoff. Defaults: 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// OnRenew, if set, is called after each rotation (e.g. to save the
	// leaf to disk). It runs on the renewer's goroutine.
	OnRenew func(*Leaf)
	// Logger receives renewals and failures. Nil discards.
	Logger *slog.Logger
}

// renewAt returns when to renew l.
func renewAt(l *Leaf, before time.Duration) time.Time {
	if before <= 0 {
		before = l.Cert.NotAfter.Sub(l.Cert.NotBefore) / 3
	}
	return l.Cert.NotAfter.Add(-before)
}

// Renew keeps the Reloader's certificate fresh until ctx ends: when less
// than cfg.Before of the current certificate's validity remains, it calls
// cfg.Issue and rotates to the result, retrying failures with exponential
// backoff (also after expiry). It returns ctx's error, or a configuration
// error at once.
func (r *Reloader) Renew(ctx context.Context, cfg RenewConfig) error {
	if cfg.Clock == nil {
		return errors.New("pki: renew: RenewConfig.Clock: must be set")
	}
	if cfg.Issue == nil {
		return errors.New("pki: renew: RenewConfig.Issue: must be set")
	}
	if cfg.Before < 0 {
		return fmt.Errorf("pki: renew: RenewConfig.Before: must not be negative, got %s", cfg.Before)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(time.Minute, cfg.MinBackoff)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wait := func(d time.Duration) error { return clock.Sleep(ctx, cfg.Clock, d) }
	if r.Leaf() == nil {
		return errors.New("pki: renew: reloader has no certificate (use NewReloader)")
	}
	backoff := clock.Backoff{Min: cfg.MinBackoff, Max: cfg.MaxBackoff}
	for {
		leaf := r.Leaf()
		if d := renewAt(leaf, cfg.Before).Sub(cfg.Clock.Now()); d > 0 {
			if err := wait(d); err != nil {
				return err
			}
			continue // re-read: someone may have rotated meanwhile
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		next, err := cfg.Issue(ctx)
		if err == nil {
			err = r.Rotate(next)
		}
		if err != nil {
			d := backoff.Next()
			log.Warn("certificate renewal failed", "serial", leaf.Cert.SerialNumber, "not_after", leaf.Cert.NotAfter, "retry_in", d, "err", err)
			if err := wait(d); err != nil {
				return err
			}
			continue
		}
		log.Info("certificate renewed", "serial", next.Cert.SerialNumber, "not_after", next.Cert.NotAfter)
		if cfg.OnRenew != nil {
			cfg.OnRenew(next)
		}
		if !renewAt(next, cfg.Before).After(cfg.Clock.Now()) {
			// The issuer handed out a certificate already due for
			// renewal (e.g. clamped to its CA's expiry): do not spin.
			d := backoff.Next()
			log.Warn("renewed certificate is already due for renewal", "serial", next.Cert.SerialNumber, "not_after", next.Cert.NotAfter, "retry_in", d)
			if err := wait(d); err != nil {
				return err
			}
			continue
		}
		backoff.Reset()
	}
}
