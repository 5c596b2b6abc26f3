package region

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/sched"
)

// workloadCertTTL is how long a workload certificate lives; agents renew
// it with a third of that left.
const workloadCertTTL = 24 * time.Hour

// workloadCertRequest is the body of POST /v1/agent/workload-cert: a
// machine asks for the workload identity of a service it runs, for a key
// that stays on the machine (the CSR's).
type workloadCertRequest struct {
	// Service is the service key, "<org>.<app>.<service>".
	Service string `json:"service"`
	// CSR is a PEM certificate request for the machine's key for that
	// service; what it claims is ignored.
	CSR string `json:"csr"`
}

// workloadCertResponse carries the workload certificate.
type workloadCertResponse struct {
	Service     string `json:"service"`
	ID          string `json:"id"`          // the SPIFFE ID issued
	Certificate string `json:"certificate"` // PEM chain: leaf, region intermediate
	CA          string `json:"ca"`          // PEM root
}

// splitServiceKey splits "<org>.<app>.<service>" into its three names.
func splitServiceKey(key string) (org, app, svc string, err error) {
	parts := strings.Split(key, ".")
	if len(parts) != 3 {
		return "", "", "", fmt.Errorf("%q is not a service key <org>.<app>.<service>", key)
	}
	for _, p := range parts {
		if err := pki.ValidateName(p); err != nil {
			return "", "", "", fmt.Errorf("%q: %v", key, err)
		}
	}
	return parts[0], parts[1], parts[2], nil
}

// workloadCert issues the workload certificate of a service to a machine
// of this region that has an instance of it assigned (not lost): the
// identity spiffe://<td>/org/<org>/app/<app>/service/<service>, client
// usage, for the CSR's key, from this region's intermediate. The machine's
// node proxy presents it on behalf of the service's local instances.
func (s *Server) workloadCert(w http.ResponseWriter, r *http.Request) error {
	var req workloadCertRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	org, app, svc, err := splitServiceKey(req.Service)
	if err != nil {
		return fieldError("service", "%v", err)
	}
	if req.CSR == "" {
		return fieldError("csr", "required")
	}
	ctx := r.Context()
	machine := callerOf(ctx).Machine
	resp, err := s.cli.Get(ctx, s.keys.assignMachine(machine), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read assignments: %w", err)
	}
	runs := false
	for _, kv := range resp.Kvs {
		var a assignRecord
		if json.Unmarshal(kv.Value, &a) == nil && a.Service == req.Service && a.State != string(sched.StateLost) {
			runs = true
			break
		}
	}
	if !runs {
		s.log.Warn("workload certificate refused: the machine runs no instance of the service", "machine", machine, "service", req.Service)
		return apiErr(http.StatusForbidden, api.CodeForbidden, "machine %q runs no instance of service %q", machine, req.Service)
	}
	id := pki.WorkloadID(s.cfg.CA.TrustDomain, org, app, svc)
	leaf, err := s.cfg.CA.IssueFromCSR([]byte(req.CSR), pki.LeafRequest{ID: id, Usage: pki.UsageClient,
		TTL: workloadCertTTL, Now: s.cfg.Now()})
	if err != nil {
		return fieldError("csr", "%v", err)
	}
	s.log.Debug("workload certificate issued", "machine", machine, "id", id.String(), "not_after", leaf.Cert.NotAfter)
	writeJSON(w, http.StatusOK, workloadCertResponse{Service: req.Service, ID: id.String(),
		Certificate: string(leaf.ChainPEM()), CA: string(s.rootPEM)})
	return nil
}
