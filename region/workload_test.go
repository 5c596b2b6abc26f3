package region

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// postWorkloadCert calls POST /v1/agent/workload-cert as machine m.
func postWorkloadCert(t *testing.T, m *fakeMachine, body any) (int, workloadCertResponse, string) {
	t.Helper()
	b, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", m.client.BaseURL+"/v1/agent/workload-cert", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := m.client.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	var out workloadCertResponse
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(buf.Bytes(), &out); err != nil {
			t.Fatalf("decoding %s: %v", buf.String(), err)
		}
	}
	return resp.StatusCode, out, buf.String()
}

// TestWorkloadCertificates checks that a machine gets the workload identity
// of a service only while it has an instance of it assigned, for its own
// key, and that bad requests name their field.
func TestWorkloadCertificates(t *testing.T) {
	in := pkitest.New(t, "fra")
	s := single(t, in, "fra", nil)
	ctx := testutil.Context(t, time.Minute)
	gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	a := joinMachine(t, in, s, "fra1-a", "fra1", 4000, 4096)
	b := joinMachine(t, in, s, "fra1-b", "fra1", 4000, 4096)
	stop := make(chan struct{})
	defer close(stop)
	a.keepAlive(t, stop)
	b.keepAlive(t, stop)
	testutil.Eventually(t, 10*time.Second, "machines ready", func() (bool, string) {
		ms, err := gc.Machines(ctx)
		ready := 0
		for _, m := range ms {
			if m.Ready {
				ready++
			}
		}
		return err == nil && ready == 2, itoa(ready)
	})
	if _, err := gc.Apply(ctx, testApply("fra", 1, "dep-1", 1)); err != nil {
		t.Fatal(err)
	}
	var runs, idle *fakeMachine
	testutil.Eventually(t, 10*time.Second, "one instance placed", func() (bool, string) {
		na, nb := len(a.assignments(t)), len(b.assignments(t))
		switch {
		case na == 1 && nb == 0:
			runs, idle = a, b
		case nb == 1 && na == 0:
			runs, idle = b, a
		default:
			return false, itoa(na) + "," + itoa(nb)
		}
		return true, ""
	})
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	// The CSR claims another organization: the claim is ignored.
	csr, err := pki.NewCSR(key, pki.WorkloadID(pkitest.TrustDomain, "evil", "web", "api"))
	if err != nil {
		t.Fatal(err)
	}
	code, resp, body := postWorkloadCert(t, runs, workloadCertRequest{Service: "acme.web.api", CSR: string(csr)})
	if code != http.StatusOK {
		t.Fatalf("workload certificate for the machine running the service: %d %s", code, body)
	}
	leaf, err := pki.NewLeaf([]byte(resp.Certificate), key)
	if err != nil {
		t.Fatal(err)
	}
	id, err := leaf.ID()
	if err != nil {
		t.Fatal(err)
	}
	if want := pki.WorkloadID(pkitest.TrustDomain, "acme", "web", "api"); id != want || resp.ID != want.String() {
		t.Fatalf("issued %s (%s), want %s", id, resp.ID, want)
	}
	if _, err := leaf.Verify(in.Root.Pool(), time.Now()); err != nil {
		t.Fatalf("workload certificate does not chain to the root: %v", err)
	}

	// The other machine runs no instance of it.
	if code, _, body := postWorkloadCert(t, idle, workloadCertRequest{Service: "acme.web.api", CSR: string(csr)}); code != http.StatusForbidden {
		t.Fatalf("machine without the service: %d %s, want 403", code, body)
	}
	// Bad input names the field.
	for _, c := range []struct {
		req   any
		field string
	}{
		{workloadCertRequest{Service: "acme.web", CSR: string(csr)}, "service"},
		{workloadCertRequest{Service: "acme.web.api"}, "csr"},
		{workloadCertRequest{Service: "acme.web.api", CSR: "garbage"}, "csr"},
		{map[string]string{"service": "acme.web.api", "csr": string(csr), "extra": "x"}, "extra"},
	} {
		code, _, body := postWorkloadCert(t, runs, c.req)
		if code != http.StatusBadRequest || !bytes.Contains([]byte(body), []byte(`"path":"`+c.field+`"`)) {
			t.Errorf("%+v: %d %s, want 400 naming %s", c.req, code, body, c.field)
		}
	}
	// The global plane may not ask for workload certificates.
	req, _ := http.NewRequestWithContext(ctx, "POST", s.URL()+"/v1/agent/workload-cert",
		bytes.NewReader([]byte(`{"service":"acme.web.api","csr":"x"}`)))
	r, err := in.GlobalClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusForbidden {
		t.Fatalf("global asking for a workload certificate: %d, want 403", r.StatusCode)
	}
}
