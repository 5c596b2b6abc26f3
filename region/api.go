package region

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
)

// tlsConfig is mutual TLS: the handshake verifies any client certificate
// against the root and admits only the global control plane (issued by the
// root) and this region's servers and machines (issued by this region's
// intermediate). A client without a certificate gets through the handshake
// but may call only /v1/join; plaintext never gets an answer from a
// handler.
func (s *Server) tlsConfig() *tls.Config {
	members, err := pki.RegionMembers(s.cfg.CA.Cert, pki.KindServer, pki.KindMachine)
	if err != nil {
		panic(err) // the CA was checked in Start
	}
	admit := pki.AnyOf(
		pki.AllOf(pki.AllowKinds(pki.KindGlobal, pki.KindEdge), pki.RequireIssuer(s.cfg.CA.Root)),
		members,
		// Other regions' servers read this region's endpoint feed; their
		// chains were verified against the root.
		pki.AllowKinds(pki.KindServer),
	)
	cfg := pki.ServerConfig(s.certs, s.roots, admit)
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

// who may call a route.
const (
	anyone  = iota
	global  // the global plane, or a server of this region
	machine // a machine of this region
	feed    // the global plane, edges, any region's servers, this region's machines
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, who int, h handler) {
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

	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, apiErr(http.StatusNotFound, api.CodeNotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// wrap authorizes the caller for the route and turns returned errors into
// JSON error answers.
func (s *Server) wrap(name string, who int, h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if who != anyone {
			peer, err := pki.PeerFromConnectionState(r.TLS)
			if err != nil || len(r.TLS.PeerCertificates) == 0 {
				writeErr(w, apiErr(http.StatusUnauthorized, api.CodeUnauthenticated, "this call needs a client certificate"))
				return
			}
			switch {
			case who == global && peer.ID.Kind == pki.KindGlobal:
			case who == global && peer.ID.Kind == pki.KindServer && peer.ID.Region == s.cfg.Region:
			case who == machine && peer.ID.Kind == pki.KindMachine && peer.ID.Region == s.cfg.Region:
			case who == feed && (peer.ID.Kind == pki.KindGlobal || peer.ID.Kind == pki.KindEdge || peer.ID.Kind == pki.KindServer ||
				(peer.ID.Kind == pki.KindMachine && peer.ID.Region == s.cfg.Region)):
			default:
				s.log.Warn("refused caller", "route", name, "peer", peer.ID.String())
				writeErr(w, apiErr(http.StatusForbidden, api.CodeForbidden, "%s may not call %s", peer.ID, name))
				return
			}
			ctx = context.WithValue(ctx, callerKey{}, peer.ID)
		}
		if err := h(w, r.WithContext(ctx)); err != nil {
			var ae *api.Error
			if r.Context().Err() != nil {
				// The caller went away (an agent closing, a canceled call).
				s.log.Debug("request abandoned by its caller", "route", name, "err", err)
				return
			}
			if !errors.As(err, &ae) {
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

// decode strictly decodes a JSON body of at most 8 MiB.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return apiErr(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body over 8 MiB")
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
