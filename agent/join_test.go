package agent

import (
	"github.com/meridian-run/meridian/testutil"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
)

// machines lists the ids of the region's machines.
func (r *testRegion) machines(t *testing.T) []string {
	t.Helper()
	ms, err := r.global.Machines(testutil.Context(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

func TestJoin(t *testing.T) {
	testutil.Slow(t)
	r := newRegion(t, "fra")

	t.Run("valid token", func(t *testing.T) {
		a := r.startAgent(t, "m-ok", "fra1", nil)
		ms, err := r.global.Machines(testutil.Context(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(ms, func(m regionapi.Machine) bool {
			return m.ID == "m-ok"
		})
		if i < 0 {
			t.Fatalf("machine m-ok not registered: %+v", ms)
		}
		if m := ms[i]; m.Datacenter != "fra1" || m.MilliCPU != 4000 || m.MemoryMB != 4096 || m.Address != "127.0.0.1" {
			t.Errorf("registered as %+v", m)
		}
		testutil.Eventually(t, 10*time.Second, "machine ready (heartbeating)", func() (bool, string) {
			ms, err := r.global.Machines(testutil.Context(t, 5*time.Second))
			if err != nil {
				return false, err.Error()
			}
			for _, m := range ms {
				if m.ID == "m-ok" {
					return m.Ready, "not ready"
				}
			}
			return false, "absent"
		})
		id, err := a.Certificate().ID()
		if err != nil || id != pki.MachineID(pkitest.TrustDomain, "fra", "m-ok") {
			t.Errorf("certificate identity %v, %v", id, err)
		}
		// The identity is saved: the token is not needed again.
		a.Close()
		cfg := a.cfg
		cfg.JoinToken = ""
		b := startWith(t, cfg)
		if !b.Certificate().Cert.Equal(a.Certificate().Cert) {
			t.Error("a restarted agent did not reuse its saved certificate")
		}
	})

	type refusal struct {
		name   string
		region string // the agent's configured region
		token  func(t *testing.T) string
		want   string
	}
	cases := []refusal{
		{name: "wrong secret", token: func(t *testing.T) string {
			v := r.token(t, time.Hour, 1).Value
			return v[:len(v)-3] + "zzz"
		}, want: "unknown join token"},
		{name: "expired", token: func(t *testing.T) string {
			tok := r.token(t, time.Millisecond, 1)
			testutil.Eventually(t, 5*time.Second, "token expired", func() (bool, string) { return time.Now().After(tok.ExpiresAt), "" })
			return tok.Value
		}, want: "expired at"},
		{name: "revoked", token: func(t *testing.T) string {
			tok := r.token(t, time.Hour, 1)
			if err := r.srv.RevokeJoinToken(testutil.Context(t, 5*time.Second), tok.ID); err != nil {
				t.Fatal(err)
			}
			return tok.Value
		}, want: "was revoked"},
		{name: "used up", token: func(t *testing.T) string {
			tok := r.token(t, time.Hour, 1)
			cfg := r.agentConfig(t, "m-first", "fra1")
			cfg.JoinToken = tok.Value
			startWith(t, cfg)
			return tok.Value
		}, want: "already used"},
		{name: "token of another region", token: func(t *testing.T) string {
			return "was" + strings.TrimPrefix(r.token(t, time.Hour, 1).Value, "fra")
		}, want: `JoinToken is for region "was", but Region is "fra"`},
		{name: "servers of another region", region: "was", token: func(t *testing.T) string {
			return "was" + strings.TrimPrefix(r.token(t, time.Hour, 1).Value, "fra")
		}, want: `not a server of the agent's region "was"`},
		{name: "malformed", token: func(t *testing.T) string { return "fra.nonsense" }, want: "malformed join token"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := "m-" + strings.ReplaceAll(c.name, " ", "-")
			cfg := r.agentConfig(t, name, "fra1")
			if c.region != "" {
				cfg.Region = c.region
			}
			cfg.JoinToken = c.token(t)
			a, err := Start(testutil.Context(t, 10*time.Second), cfg)
			if err == nil {
				a.Close()
				t.Fatal("join accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			t.Logf("refused: %v", err)
			if slices.Contains(r.machines(t), name) {
				t.Errorf("machine %s registered despite the refusal", name)
			}
			if _, err := os.Stat(filepath.Join(cfg.DataDir, identityDir, metaFile)); !os.IsNotExist(err) {
				t.Errorf("identity saved despite the refusal: %v", err)
			}
		})
	}

	t.Run("no token and no identity", func(t *testing.T) {
		cfg := r.agentConfig(t, "m-none", "fra1")
		_, err := Start(testutil.Context(t, 10*time.Second), cfg)
		if err == nil || !strings.Contains(err.Error(), "JoinToken is required") {
			t.Fatalf("error %v does not name JoinToken", err)
		}
	})
}
