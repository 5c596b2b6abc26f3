package region

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/sched"
)

// machineCertTTL is how long a machine certificate lives; agents renew it
// with a third of that left.
const machineCertTTL = 24 * time.Hour

var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return b32.EncodeToString(b)
}

// CreateJoinToken creates a join token for this region, valid for ttl
// (default 1h) and uses joins (0 = unlimited). The value is returned once;
// only its hash is stored.
func (s *Server) CreateJoinToken(ctx context.Context, ttl time.Duration, uses int) (regionapi.JoinToken, error) {
	if ttl == 0 {
		ttl = time.Hour
	}
	if ttl < 0 || uses < 0 {
		return regionapi.JoinToken{}, badRequest("ttl and uses must not be negative")
	}
	id, secret := randomString(5), randomString(20)
	sum := sha256.Sum256([]byte(secret))
	now := s.cfg.Now().UTC()
	rec := tokenRecord{ID: id, Hash: sum[:], ExpiresAt: now.Add(ttl), Uses: uses, CreatedAt: now}
	if _, err := s.cli.Put(ctx, s.keys.token(id), mustJSON(rec)); err != nil {
		return regionapi.JoinToken{}, fmt.Errorf("store join token: %w", err)
	}
	s.log.Info("join token created", "token", id, "expires", rec.ExpiresAt, "uses", uses)
	return regionapi.JoinToken{ID: id, Value: s.cfg.Region + "." + id + "." + secret, Region: s.cfg.Region,
		ExpiresAt: rec.ExpiresAt, Uses: uses}, nil
}

func (s *Server) createJoinToken(w http.ResponseWriter, r *http.Request) error {
	var req regionapi.JoinTokenRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	var ttl time.Duration
	if req.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(req.TTL); err != nil || ttl <= 0 {
			return fieldError("ttl", "want a positive duration such as 1h, got %q", req.TTL)
		}
	}
	if req.Uses < 0 {
		return fieldError("uses", "must not be negative")
	}
	t, err := s.CreateJoinToken(r.Context(), ttl, req.Uses)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, t)
	return nil
}

// RevokeJoinToken revokes a join token; machines that joined with it keep
// their certificates.
func (s *Server) RevokeJoinToken(ctx context.Context, id string) error {
	for {
		resp, err := s.cli.Get(ctx, s.keys.token(id))
		if err != nil {
			return fmt.Errorf("read join token: %w", err)
		}
		if len(resp.Kvs) == 0 {
			return apiErr(http.StatusNotFound, api.CodeNotFound, "join token %q not found", id)
		}
		var rec tokenRecord
		if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
			return fmt.Errorf("join token record: %w", err)
		}
		rec.Revoked = true
		txn, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.keys.token(id)), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(s.keys.token(id), mustJSON(rec))).Commit()
		if err != nil {
			return fmt.Errorf("revoke join token: %w", err)
		}
		if txn.Succeeded {
			s.log.Info("join token revoked", "token", id)
			return nil
		}
	}
}

func (s *Server) revokeJoinToken(w http.ResponseWriter, r *http.Request) error {
	if err := s.RevokeJoinToken(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func joinRefused(format string, args ...any) *api.Error {
	return apiErr(http.StatusUnauthorized, api.CodeUnauthenticated, format, args...)
}

// checkJoin validates a join request's fields.
func checkJoin(req regionapi.JoinRequest) error {
	var msgs []string
	var fields []api.FieldError
	add := func(path, format string, args ...any) {
		f := api.FieldError{Path: path, Message: fmt.Sprintf(format, args...)}
		fields = append(fields, f)
		msgs = append(msgs, f.String())
	}
	if err := pki.ValidateName(req.Machine); err != nil {
		add("machine", "%q: %v", req.Machine, err)
	}
	if err := pki.ValidateName(req.Datacenter); err != nil {
		add("datacenter", "%q: %v", req.Datacenter, err)
	}
	if net.ParseIP(req.Address) == nil {
		add("address", "%q is not an IP address", req.Address)
	}
	if req.MilliCPU <= 0 {
		add("millicpu", "must be positive, got %d", req.MilliCPU)
	}
	if req.MemoryMB <= 0 {
		add("memory_mb", "must be positive, got %d", req.MemoryMB)
	}
	if req.CSR == "" {
		add("csr", "required")
	}
	if len(fields) == 0 {
		return nil
	}
	return &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalid, Message: strings.Join(msgs, "; "), Fields: fields}
}

// join registers a machine: the join token must be this region's, unexpired,
// unrevoked and not used up; the answer carries the machine's certificate,
// issued for the CSR's key with the region's chosen identity. A name
// already joined is taken only by its own key (the machine joining again)
// or once the certificate last issued to it expired: a live machine's name,
// and with it its assignments and their secrets, is never handed to
// another key.
func (s *Server) join(w http.ResponseWriter, r *http.Request) error {
	var req regionapi.JoinRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	ctx := r.Context()
	parts := strings.Split(req.Token, ".")
	if len(parts) != 3 {
		s.log.Warn("join refused: malformed token", "machine", req.Machine, "remote", r.RemoteAddr)
		return joinRefused("malformed join token")
	}
	if parts[0] != s.cfg.Region {
		s.log.Warn("join refused: token of another region", "token_region", parts[0], "machine", req.Machine)
		return joinRefused("join token is for region %q, not %q", parts[0], s.cfg.Region)
	}
	if err := checkJoin(req); err != nil {
		return err
	}
	for {
		resp, err := s.cli.Get(ctx, s.keys.token(parts[1]))
		if err != nil {
			return fmt.Errorf("read join token: %w", err)
		}
		if len(resp.Kvs) == 0 {
			s.log.Warn("join refused: unknown token", "machine", req.Machine)
			return joinRefused("unknown join token")
		}
		var tok tokenRecord
		if err := json.Unmarshal(resp.Kvs[0].Value, &tok); err != nil {
			return fmt.Errorf("join token record: %w", err)
		}
		sum := sha256.Sum256([]byte(parts[2]))
		now := s.cfg.Now().UTC()
		switch {
		case subtle.ConstantTimeCompare(sum[:], tok.Hash) != 1:
			s.log.Warn("join refused: wrong token secret", "token", tok.ID, "machine", req.Machine)
			return joinRefused("unknown join token")
		case tok.Revoked:
			s.log.Warn("join refused: revoked token", "token", tok.ID, "machine", req.Machine)
			return joinRefused("join token %s was revoked", tok.ID)
		case now.After(tok.ExpiresAt):
			s.log.Warn("join refused: expired token", "token", tok.ID, "machine", req.Machine)
			return joinRefused("join token %s expired at %s", tok.ID, tok.ExpiresAt.Format(time.RFC3339))
		case tok.Uses > 0 && tok.Used >= tok.Uses:
			s.log.Warn("join refused: token used up", "token", tok.ID, "machine", req.Machine)
			return joinRefused("join token %s was already used %d time(s)", tok.ID, tok.Used)
		}
		leaf, err := s.cfg.CA.IssueFromCSR([]byte(req.CSR), pki.LeafRequest{
			ID: pki.MachineID(s.cfg.CA.TrustDomain, s.cfg.Region, req.Machine), Usage: pki.UsageBoth,
			IPs: []net.IP{net.ParseIP(req.Address)}, TTL: machineCertTTL, Now: now,
		})
		if err != nil {
			return fieldError("csr", "%v", err)
		}
		keySum := sha256.Sum256(leaf.Cert.RawSubjectPublicKeyInfo)
		m := machineRecord{ID: req.Machine, Datacenter: req.Datacenter, Address: req.Address,
			MilliCPU: req.MilliCPU, MemoryMB: req.MemoryMB, JoinedAt: now, KeySHA256: keySum[:], CertNotAfter: leaf.Cert.NotAfter}
		prev, err := s.cli.Get(ctx, s.keys.machine(m.ID))
		if err != nil {
			return fmt.Errorf("read machine: %w", err)
		}
		// The machine's record must be as read: a concurrent join or
		// renewal under the same name is checked again.
		machineAsRead := clientv3.Compare(clientv3.ModRevision(s.keys.machine(m.ID)), "=", int64(0))
		if len(prev.Kvs) == 1 {
			machineAsRead = clientv3.Compare(clientv3.ModRevision(s.keys.machine(m.ID)), "=", prev.Kvs[0].ModRevision)
			var old machineRecord
			if err := json.Unmarshal(prev.Kvs[0].Value, &old); err != nil {
				return fmt.Errorf("machine record: %w", err)
			}
			sameKey := subtle.ConstantTimeCompare(old.KeySHA256, keySum[:]) == 1
			if until := old.certValidUntil(); !sameKey && now.Before(until) {
				s.log.Warn("join refused: the machine is live and the key is not its own", "machine", m.ID, "token", tok.ID,
					"certificate_valid_until", until, "remote", r.RemoteAddr)
				return apiErr(http.StatusConflict, api.CodeConflict,
					"machine %q has already joined region %s and its certificate is valid until %s: a join under its name must use the machine's own key (or come after that certificate expired)",
					m.ID, s.cfg.Region, until.UTC().Format(time.RFC3339))
			}
			if sameKey {
				// The machine itself joining again: the operator's drain
				// and its mesh port stay.
				m.Draining, m.MeshPort = old.Draining, old.MeshPort
			}
		}
		tok.Used++
		txn, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.keys.token(tok.ID)), "=", resp.Kvs[0].ModRevision), machineAsRead).
			Then(clientv3.OpPut(s.keys.token(tok.ID), mustJSON(tok)), clientv3.OpPut(s.keys.machine(m.ID), mustJSON(m))).
			Commit()
		if err != nil {
			return fmt.Errorf("record join: %w", err)
		}
		if !txn.Succeeded {
			continue // the token was used, or the machine changed, concurrently: check again
		}
		s.log.Info("machine joined", "machine", m.ID, "datacenter", m.Datacenter, "address", m.Address,
			"millicpu", m.MilliCPU, "memory_mb", m.MemoryMB, "token", tok.ID, "rejoined", len(prev.Kvs) == 1)
		writeJSON(w, http.StatusOK, regionapi.JoinResponse{Machine: m.ID, Certificate: string(leaf.ChainPEM()),
			CA: string(s.rootPEM), LeaseTTL: s.cfg.LeaseTTL.String()})
		return nil
	}
}

// renew issues a fresh certificate to a machine for a new key, and
// records the key in the machine's record.
func (s *Server) renew(w http.ResponseWriter, r *http.Request) error {
	var req regionapi.RenewRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	id := callerOf(r.Context())
	leaf, err := s.cfg.CA.IssueFromCSR([]byte(req.CSR), pki.LeafRequest{
		ID: pki.MachineID(s.cfg.CA.TrustDomain, s.cfg.Region, id.Machine), Usage: pki.UsageBoth,
		TTL: machineCertTTL, Now: s.cfg.Now(),
	})
	if err != nil {
		return fieldError("csr", "%v", err)
	}
	// The record follows the machine's key: a join under its name must
	// prove this one from now on.
	keySum := sha256.Sum256(leaf.Cert.RawSubjectPublicKeyInfo)
	if _, err := s.updateMachine(r.Context(), id.Machine, func(m *machineRecord) {
		m.KeySHA256, m.CertNotAfter = keySum[:], leaf.Cert.NotAfter
	}); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, regionapi.JoinResponse{Machine: id.Machine, Certificate: string(leaf.ChainPEM()),
		CA: string(s.rootPEM), LeaseTTL: s.cfg.LeaseTTL.String()})
	return nil
}

// heartbeat keeps the machine's liveness key alive on its lease, granting a
// new lease when the old one expired.
func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) error {
	var hb regionapi.Heartbeat
	if err := s.decode(w, r, &hb); err != nil {
		return err
	}
	ctx := r.Context()
	id := callerOf(ctx).Machine
	// One read for the record and the liveness key: heartbeats are the
	// region's steadiest load.
	resp, err := s.cli.Txn(ctx).Then(clientv3.OpGet(s.keys.machine(id)), clientv3.OpGet(s.keys.alive(id))).Commit()
	if err != nil {
		return fmt.Errorf("read machine: %w", err)
	}
	record, alive := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	if len(record) == 0 {
		return apiErr(http.StatusNotFound, api.CodeNotFound, "machine %q has not joined region %s", id, s.cfg.Region)
	}
	var m machineRecord
	if err := json.Unmarshal(record[0].Value, &m); err != nil {
		return fmt.Errorf("machine record: %w", err)
	}
	var lease clientv3.LeaseID
	if len(alive) == 1 {
		lease = clientv3.LeaseID(alive[0].Lease)
	}
	if hb.MeshPort < 0 || hb.MeshPort > 65535 {
		return fieldError("mesh_port", "%d is not a port", hb.MeshPort)
	}
	if (hb.Address != "" && hb.Address != m.Address) || (hb.MilliCPU > 0 && hb.MilliCPU != m.MilliCPU) ||
		(hb.MemoryMB > 0 && hb.MemoryMB != m.MemoryMB) || (hb.MeshPort > 0 && hb.MeshPort != m.MeshPort) {
		if net.ParseIP(hb.Address) == nil && hb.Address != "" {
			return fieldError("address", "%q is not an IP address", hb.Address)
		}
		if m, err = s.updateMachine(ctx, id, func(m *machineRecord) {
			if hb.Address != "" {
				m.Address = hb.Address
			}
			if hb.MilliCPU > 0 {
				m.MilliCPU = hb.MilliCPU
			}
			if hb.MemoryMB > 0 {
				m.MemoryMB = hb.MemoryMB
			}
			if hb.MeshPort > 0 {
				m.MeshPort = hb.MeshPort
			}
		}); err != nil {
			return err
		}
	}
	if err := s.keepAlive(ctx, id, lease); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, regionapi.HeartbeatResponse{LeaseTTL: s.cfg.LeaseTTL.String(), Draining: m.Draining})
	return nil
}

// keepAlive renews the lease the machine's liveness key is bound to (0:
// none), or binds the key to a new lease.
func (s *Server) keepAlive(ctx context.Context, id string, lease clientv3.LeaseID) error {
	if lease != 0 {
		_, err := s.cli.KeepAliveOnce(ctx, lease)
		if err == nil {
			return nil
		}
		if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("keep lease alive: %w", err)
		}
	}
	ttl := int64((s.cfg.LeaseTTL + time.Second - 1) / time.Second)
	granted, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	if _, err := s.cli.Put(ctx, s.keys.alive(id), strconv.FormatInt(int64(granted.ID), 16), clientv3.WithLease(granted.ID)); err != nil {
		return fmt.Errorf("put liveness: %w", err)
	}
	s.log.Info("machine alive", "machine", id, "lease_ttl", s.cfg.LeaseTTL)
	return nil
}

// assignment joins an assignment record with its deployment's spec.
func (s *Server) assignment(ctx context.Context, a assignRecord) (regionapi.Assignment, error) {
	sp, err := s.spec(ctx, a.DeploymentID)
	if err != nil {
		return regionapi.Assignment{}, err
	}
	// Only the secrets the instance's env names go to the machine: the
	// registry secret stays with the region, which pulls for it.
	env := map[string][]byte{}
	for _, e := range sp.Definition.Env {
		if v, ok := sp.Secrets[e.Secret]; ok && e.Secret != "" {
			env[e.Secret] = v
		}
	}
	secrets, err := s.sealer.open(a.DeploymentID, env)
	if err != nil {
		return regionapi.Assignment{}, err
	}
	return regionapi.Assignment{ID: a.ID, Service: a.Service, Org: sp.Org, App: sp.App, ServiceName: sp.Service,
		DeploymentID: a.DeploymentID, Version: a.Version, Definition: sp.Definition, Secrets: secrets}, nil
}

// watch streams the machine's assignments as NDJSON: a snapshot, then
// changes. A lost assignment is sent as a delete: the machine must stop it.
func (s *Server) watch(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	id := callerOf(ctx).Machine
	after, err := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	if err != nil || after < 0 {
		return fieldError("after", "want a revision (0 for a snapshot), got %q", r.URL.Query().Get("after"))
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		return errors.New("streaming unsupported")
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	send := func(ev regionapi.WatchEvent) error {
		if err := enc.Encode(ev); err != nil {
			return err
		}
		fl.Flush()
		return nil
	}
	prefix := s.keys.assignMachine(id)
	for ctx.Err() == nil {
		if after == 0 {
			resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
			if err != nil {
				return nil // the agent reconnects
			}
			ev := regionapi.WatchEvent{Type: regionapi.EventSnapshot, Revision: resp.Header.Revision, Assignments: []regionapi.Assignment{}}
			for _, kv := range resp.Kvs {
				var a assignRecord
				if json.Unmarshal(kv.Value, &a) != nil || a.State == string(sched.StateLost) {
					continue
				}
				as, err := s.assignment(ctx, a)
				if err != nil {
					s.log.Error("assignment without spec", "instance", a.ID, "err", err)
					continue
				}
				ev.Assignments = append(ev.Assignments, as)
			}
			if send(ev) != nil {
				return nil
			}
			after = resp.Header.Revision
		}
		var err error
		after, err = s.follow(ctx, prefix, after, send)
		if err != nil {
			return nil
		}
	}
	return nil
}

// follow streams changes under prefix after rev until the watch breaks. It
// returns 0 when the history was compacted (a snapshot must follow), or the
// last revision sent.
func (s *Server) follow(ctx context.Context, prefix string, rev int64, send func(regionapi.WatchEvent) error) (int64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := s.cli.Watch(clientv3.WithRequireLeader(wctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	keepalive := time.NewTicker(10 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			return rev, ctx.Err()
		case <-keepalive.C:
			if err := send(regionapi.WatchEvent{Type: "keepalive", Revision: rev}); err != nil {
				return rev, err
			}
		case resp, ok := <-wch:
			if !ok {
				return rev, nil
			}
			if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
				return 0, nil
			}
			if err := resp.Err(); err != nil {
				return rev, nil
			}
			for _, e := range resp.Events {
				ev := regionapi.WatchEvent{Revision: e.Kv.ModRevision, ID: strings.TrimPrefix(string(e.Kv.Key), prefix)}
				var a assignRecord
				switch {
				case e.Type == clientv3.EventTypeDelete:
					ev.Type = regionapi.EventDelete
				case json.Unmarshal(e.Kv.Value, &a) != nil:
					continue
				case a.State == string(sched.StateLost):
					ev.Type = regionapi.EventDelete
				default:
					as, err := s.assignment(ctx, a)
					if err != nil {
						s.log.Error("assignment without spec", "instance", a.ID, "err", err)
						continue
					}
					ev.Type, ev.Assignment = regionapi.EventPut, &as
				}
				if err := send(ev); err != nil {
					return rev, err
				}
			}
			if resp.Header.Revision > rev {
				rev = resp.Header.Revision
			}
		}
	}
}

// report records the machine's instance states; reports of instances not
// assigned to the machine are ignored, and a state that did not change is
// not written again (agents send every state periodically: an idle region
// writes nothing).
func (s *Server) report(w http.ResponseWriter, r *http.Request) error {
	var rep regionapi.StatusReport
	if err := s.decode(w, r, &rep); err != nil {
		return err
	}
	ctx := r.Context()
	id := callerOf(ctx).Machine
	resp, err := s.cli.Get(ctx, s.keys.assignMachine(id), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("read assignments: %w", err)
	}
	mine := map[string]bool{}
	for _, kv := range resp.Kvs {
		mine[strings.TrimPrefix(string(kv.Key), s.keys.assignMachine(id))] = true
	}
	var reported []regionapi.InstanceReport
	for _, in := range rep.Instances {
		if mine[in.ID] {
			reported = append(reported, in)
		}
	}
	current, err := s.statuses(ctx, reported)
	if err != nil {
		return err
	}
	now := s.cfg.Now().UTC()
	var ops []clientv3.Op
	for _, in := range reported {
		st := statusRecord{State: in.State, Healthy: in.Healthy, Restarts: in.Restarts, Message: in.Message, Ports: in.Ports}
		if cur, ok := current[in.ID]; ok && sameStatus(cur, st) {
			continue
		}
		st.UpdatedAt = now
		// Written only while the assignment exists, so a report racing the
		// instance's removal leaves nothing behind.
		assigned := clientv3.Compare(clientv3.CreateRevision(s.keys.assign(id, in.ID)), ">", 0)
		ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{assigned}, []clientv3.Op{clientv3.OpPut(s.keys.status(in.ID), mustJSON(st))}, nil))
	}
	for len(ops) > 0 {
		n := min(len(ops), maxOpsPerTxn)
		if _, err := s.cli.Txn(ctx).Then(ops[:n]...).Commit(); err != nil {
			return fmt.Errorf("write reports: %w", err)
		}
		ops = ops[n:]
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// statuses reads the recorded states of the reported instances.
func (s *Server) statuses(ctx context.Context, reported []regionapi.InstanceReport) (map[string]statusRecord, error) {
	out := make(map[string]statusRecord, len(reported))
	for len(reported) > 0 {
		n := min(len(reported), maxOpsPerTxn)
		gets := make([]clientv3.Op, n)
		for i, in := range reported[:n] {
			gets[i] = clientv3.OpGet(s.keys.status(in.ID))
		}
		resp, err := s.cli.Txn(ctx).Then(gets...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read reported states: %w", err)
		}
		for _, r := range resp.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				var st statusRecord
				if json.Unmarshal(kv.Value, &st) == nil {
					out[strings.TrimPrefix(string(kv.Key), s.keys.statusPrefix())] = st
				}
			}
		}
		reported = reported[n:]
	}
	return out, nil
}

// sameStatus reports whether two states are the same but for when they
// were recorded.
func sameStatus(a, b statusRecord) bool {
	return a.State == b.State && a.Healthy == b.Healthy && a.Restarts == b.Restarts && a.Message == b.Message && maps.Equal(a.Ports, b.Ports)
}
