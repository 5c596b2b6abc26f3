package region

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
)

// callers are the identities a region admits, each issued by the CA
// allowed to issue it (pki's peer verification refuses any other issuer):
// the global plane and edges (the root), any region's servers (their own
// region's intermediate) and, stricter, this region's servers and machines
// (this region's intermediate, exactly).
type callers struct {
	servers  pki.Authorizer // this region's servers
	operator pki.Authorizer // global, or a server of this region: the operator routes
	machine  pki.Authorizer // a machine of this region
	feed     pki.Authorizer // global, edges, any region's servers, this region's machines
	any      pki.Authorizer // any of the above: admitted at the handshake
}

func newCallers(ca *pki.CA) (callers, error) {
	servers, err := pki.RegionMembers(ca.Cert, pki.KindServer)
	if err != nil {
		return callers{}, err
	}
	machines, err := pki.RegionMembers(ca.Cert, pki.KindMachine)
	if err != nil {
		return callers{}, err
	}
	// Other regions' servers read this region's endpoint feed.
	c := callers{
		servers:  servers,
		operator: pki.AnyOf(pki.AllowKinds(pki.KindGlobal), servers),
		machine:  machines,
		feed:     pki.AnyOf(pki.AllowKinds(pki.KindGlobal, pki.KindEdge, pki.KindServer), machines),
	}
	c.any = pki.AnyOf(c.operator, c.feed)
	return c, nil
}

// tlsConfig is mutual TLS: the handshake verifies any client certificate
// against the root and its issuer, and admits only the callers. A client
// without a certificate gets through the handshake but may call only
// /v1/join and /healthz; plaintext never gets an answer from a handler.
func (s *Server) tlsConfig() *tls.Config {
	cfg := pki.ServerConfig(s.certs, s.roots, s.callers.any)
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	verify := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		return verify(cs)
	}
	cfg.NextProtos = []string{"h2", "http/1.1"}
	return cfg
}

type callerKey struct{}

// caller is the authenticated peer of a request.
func callerOf(ctx context.Context) pki.ID {
	id, _ := ctx.Value(callerKey{}).(pki.ID)
	return id
}

// handler is an API handler that returns an error to answer with.
type handler func(w http.ResponseWriter, r *http.Request) error

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	// anyone: no client certificate needed.
	var anyone pki.Authorizer
	global, machine, feed := s.callers.operator, s.callers.machine, s.callers.feed
	handle := func(pattern string, who pki.Authorizer, h handler) {
		mux.Handle(pattern, s.wrap(pattern, who, h))
	}
	handle("PUT /v1/services/{key}", global, s.applyService)
	handle("GET /v1/services/{key}", global, s.serviceStatus)
	handle("GET /v1/services", global, s.listServices)
	handle("DELETE /v1/services/{key}", global, s.deleteService)
	handle("GET /v1/instances", global, s.listInstances)
	handle("GET /v1/machines", global, s.listMachines)
	handle("GET /v1/datacenters", global, s.listDatacenters)
	handle("POST /v1/machines/{id}/drain", global, s.drainMachine)
	handle("POST /v1/join-tokens", global, s.createJoinToken)
	handle("DELETE /v1/join-tokens/{id}", global, s.revokeJoinToken)

	handle("GET /v1/feed", feed, s.serveFeed)
	handle("PUT /v1/peers", global, s.setPeers)

	handle("POST /v1/join", anyone, s.join)
	handle("POST /v1/agent/renew", machine, s.renew)
	handle("POST /v1/agent/heartbeat", machine, s.heartbeat)
	handle("GET /v1/agent/watch", machine, s.watch)
	handle("POST /v1/agent/report", machine, s.report)
	handle("POST /v1/agent/workload-cert", machine, s.workloadCert)

	if s.images != nil {
		// The image cache, for this region's machines (see imageCache).
		handle("/v2/", machine, s.images.serve)
	}

	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, apiErr(http.StatusNotFound, api.CodeNotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return s.bodyDeadline(mux)
}

// wrap authorizes the caller for the route (who; nil admits anyone, with
// or without a certificate) and turns returned errors into JSON error
// answers.
func (s *Server) wrap(name string, who pki.Authorizer, h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if who != nil {
			peer, err := pki.PeerFromConnectionState(r.TLS)
			if err != nil || len(r.TLS.PeerCertificates) == 0 {
				writeErr(w, apiErr(http.StatusUnauthorized, api.CodeUnauthenticated, "this call needs a client certificate"))
				return
			}
			if err := who(peer); err != nil {
				s.log.Warn("refused caller", "route", name, "peer", peer.ID.String(), "err", err)
				writeErr(w, apiErr(http.StatusForbidden, api.CodeForbidden, "%s may not call %s", peer.ID, name))
				return
			}
			ctx = context.WithValue(ctx, callerKey{}, peer.ID)
		}
		if err := h(w, r.WithContext(ctx)); err != nil {
			var ae *api.Error
			isAPI := errors.As(err, &ae)
			// A body that timed out cancels the request's context too; it
			// still gets its answer.
			if r.Context().Err() != nil && !(isAPI && ae.Status == http.StatusRequestTimeout) {
				// The caller went away (an agent closing, a canceled call).
				s.log.Debug("request abandoned by its caller", "route", name, "err", err)
				return
			}
			if !isAPI {
				s.log.Error("request failed", "route", name, "err", err)
				ae = apiErr(http.StatusInternalServerError, api.CodeInternal, "internal error: %v", err)
			}
			writeErr(w, ae)
		}
	})
}

func apiErr(status int, code, format string, args ...any) *api.Error {
	return &api.Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) *api.Error {
	return apiErr(http.StatusBadRequest, api.CodeInvalid, format, args...)
}

func fieldError(path, format string, args ...any) *api.Error {
	msg := fmt.Sprintf(format, args...)
	return &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalid, Message: path + ": " + msg,
		Fields: []api.FieldError{{Path: path, Message: msg}}}
}

func writeErr(w http.ResponseWriter, e *api.Error) {
	writeJSON(w, e.Status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// authBodyTimeout bounds how long a caller with a client certificate may
// take to send a request body (up to 8 MiB: an apply with its definition).
const authBodyTimeout = time.Minute

// bodyTimeout is how long r's caller may take to send its body:
// BodyTimeout without a client certificate, authBodyTimeout with one.
func (s *Server) bodyTimeout(r *http.Request) time.Duration {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return authBodyTimeout
	}
	return s.cfg.BodyTimeout
}

// bodyDeadline gives every request with a body a read deadline of
// bodyTimeout, on the request (HTTP/2) or its connection (HTTP/1.1, where
// net/http moves it again for the next request). It stays set after the
// handler, so the rest of a body the handler did not read is discarded
// within it too. Bodyless requests (the watch and feed streams) get none:
// a read deadline on an HTTP/1.1 connection would cut them.
func (s *Server) bodyDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 { // a body, or one of unknown length
			if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.bodyTimeout(r))); err != nil {
				s.log.Error("request body deadline", "err", err)
			}
		}
		next.ServeHTTP(w, r)
	})
}

// decode strictly decodes a JSON body of at most 8 MiB, which must arrive
// within bodyTimeout (see bodyDeadline).
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return apiErr(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body over 8 MiB")
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			limit := s.bodyTimeout(r)
			s.log.Warn("request body too slow", "path", r.URL.Path, "remote", r.RemoteAddr, "limit", limit)
			return apiErr(http.StatusRequestTimeout, api.CodeInvalid, "request body: not received within %s", limit)
		}
		if strings.HasPrefix(err.Error(), "json: unknown field ") {
			f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			return fieldError(f, "unknown field")
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fieldError(te.Field, "want %s, got %s", te.Type, te.Value)
		}
		return badRequest("request body: %v", err)
	}
	return nil
}
