package global

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/definition"
	"github.com/meridian-run/meridian/store"
)

func apiErr(status int, code, format string, args ...any) *api.Error {
	return &api.Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func errInvalid(format string, args ...any) *api.Error {
	return apiErr(http.StatusBadRequest, api.CodeInvalid, format, args...)
}

func errNotFound(format string, args ...any) *api.Error {
	return apiErr(http.StatusNotFound, api.CodeNotFound, format, args...)
}

func errConflict(format string, args ...any) *api.Error {
	return apiErr(http.StatusConflict, api.CodeConflict, format, args...)
}

// fieldErr is a 400 about one field of the request. Quote the caller's
// value in it with definition.Quote, which cuts it short.
func fieldErr(path, format string, args ...any) *api.Error {
	return fieldsErr(api.FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

// fieldsErr is a 400 about fields of the request. Each field's message
// says what is wrong with it; the top-level message only names the fields,
// so that no value is echoed twice.
func fieldsErr(fields ...api.FieldError) *api.Error {
	if len(fields) == 1 && fields[0].Path == "" {
		return errInvalid("%s", fields[0].Message)
	}
	paths := make([]string, len(fields))
	for i, f := range fields {
		paths[i] = f.Path
	}
	return &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalid,
		Message: "invalid " + strings.Join(paths, ", "), Fields: fields}
}

// storeErr maps a store error to an API error: not-found and conflict keep
// their meaning; anything else is internal and its detail only logged.
func storeErr(err error, what string) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return errNotFound("%s not found", what)
	case errors.Is(err, store.ErrConflict):
		return errConflict("%s already exists", what)
	case errors.Is(err, store.ErrBadPageToken):
		return fieldErr("page_token", "malformed page token")
	}
	return err
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, nil, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// writeError answers with the API's error body. Errors that are not
// *api.Error are internal: logged in full by instrument, answered as 500
// without detail.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		ae = apiErr(http.StatusInternalServerError, api.CodeInternal, "internal error")
	}
	if ae.Status == 0 {
		ae.Status = http.StatusBadRequest
	}
	if ew, ok := w.(*statusWriter); ok {
		ew.err = err
	}
	if r != nil && r.ProtoMajor == 1 && unread(r) {
		// Answered before its body arrived (refused, or the body was too
		// slow or too large): the connection is closed after the answer
		// instead of reading the rest of the body first.
		w.Header().Set("Connection", "close")
	}
	b, _ := json.Marshal(ae)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ae.Status)
	w.Write(append(b, '\n'))
}

// readBody reads a request body up to the configured limit.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, apiErr(http.StatusRequestEntityTooLarge, api.CodeTooLarge,
				"request body is larger than %d bytes", s.cfg.MaxBodyBytes)
		}
		if isTimeout(err) {
			return nil, s.bodyTimeout()
		}
		return nil, errInvalid("reading request body: %v", err)
	}
	return b, nil
}

// checkContentType accepts JSON, and YAML where yaml is true.
func checkContentType(r *http.Request, yaml bool) error {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return apiErr(http.StatusUnsupportedMediaType, api.CodeUnsupported, "Content-Type %s: %v", definition.Quote(ct), err)
	}
	switch mt {
	case "application/json":
		return nil
	case "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml":
		if yaml {
			return nil
		}
	}
	want := "application/json"
	if yaml {
		want += " or application/yaml"
	}
	hint := ""
	if mt == "application/x-www-form-urlencoded" {
		hint = " (curl -d sends a form's type: add -H 'Content-Type: application/json', or use curl --json)"
	}
	return apiErr(http.StatusUnsupportedMediaType, api.CodeUnsupported, "Content-Type %s is not supported; send %s%s",
		definition.Quote(mt), want, hint)
}

// decodeJSON strictly decodes a small JSON request body into v: unknown
// fields and trailing data are errors naming the field.
func (s *Server) decodeJSON(w http.ResponseWriter, r *http.Request, v any) ([]byte, error) {
	if err := checkContentType(r, false); err != nil {
		return nil, err
	}
	body, err := s.readBody(w, r)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return nil, jsonErr(err)
	}
	if dec.More() {
		return nil, errInvalid("request body: unexpected data after the JSON object")
	}
	return body, nil
}

func jsonErr(err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return fieldErr(definition.Truncate(te.Field), "want %s, got %s", te.Type.String(), definition.Truncate(te.Value))
	case errors.As(err, &se):
		return errInvalid("request body: malformed JSON at offset %d: %v", se.Offset, err)
	case errors.Is(err, io.EOF):
		return errInvalid("request body: empty; want a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errInvalid("request body: malformed JSON: it ends inside a value")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		// The field's name is the caller's: named once, in the field.
		return &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalid, Message: "request body: unknown field",
			Fields: []api.FieldError{{Path: definition.Truncate(f), Message: "unknown field"}}}
	}
	return errInvalid("request body: %v", err)
}

// page reads limit and page_token query parameters.
func page(r *http.Request) (store.Page, error) {
	var p store.Page
	q := r.URL.Query()
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 500 {
			return p, fieldErr("limit", "want an integer from 1 to 500, got %s", definition.Quote(l))
		}
		p.Limit = n
	}
	p.Token = q.Get("page_token")
	return p, nil
}

func hashToken(tok string) []byte {
	h := sha256.Sum256([]byte(tok))
	return h[:]
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

func (s *Server) isAdmin(tok string) bool {
	return tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.AdminToken)) == 1
}

var errForbidden = apiErr(http.StatusForbidden, api.CodeForbidden,
	"this call needs the installation's admin token")

var errEdgeForbidden = apiErr(http.StatusForbidden, api.CodeForbidden,
	"an edge token may only read the region registry (GET /v1/regions and GET /v1/regions/{id})")

// authenticate checks the caller's bearer token against what the route
// needs and records the caller in the request context. A token other than
// the admin token costs one store read, whichever kind it turns out to be.
func (s *Server) authenticate(r *http.Request, need authKind) (context.Context, error) {
	ctx := r.Context()
	if need == authNone {
		return ctx, nil
	}
	tok := bearer(r)
	if tok == "" {
		return nil, errUnauthenticated
	}
	if s.isAdmin(tok) {
		if need == authOrg {
			return nil, apiErr(http.StatusForbidden, api.CodeForbidden,
				"the admin token cannot act inside an organization; use an organization's API token")
		}
		return withPrincipal(ctx, principal{admin: true}), nil
	}
	var b store.Bearer
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		b, err = tx.BearerByHash(ctx, hashToken(tok))
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, errUnauthenticated
	}
	if err != nil {
		return nil, fmt.Errorf("token lookup: %w", err)
	}
	switch {
	case b.Edge && need != authRegistry:
		return nil, errEdgeForbidden
	case b.Edge:
		return withPrincipal(ctx, principal{edge: true}), nil
	case need == authAdmin:
		return nil, errForbidden
	}
	return withPrincipal(ctx, principal{orgID: b.OrgID}), nil
}

var errUnauthenticated = apiErr(http.StatusUnauthorized, api.CodeUnauthenticated,
	"missing or invalid bearer token (Authorization: Bearer <token>)")

// statusWriter records the status and error of an answer for logs and
// metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
	err    error
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

type metrics struct {
	requests     *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	connsRefused *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meridian", Subsystem: "global", Name: "http_requests_total",
			Help: "API requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "meridian", Subsystem: "global", Name: "http_request_duration_seconds",
			Help: "API request latency by route.", Buckets: prometheus.DefBuckets,
		}, []string{"route"}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meridian", Subsystem: "global", Name: "connections_refused_total",
			Help: "API connections closed as they arrived for a connection cap, by cap (per_address, total).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.requests, m.latency, m.connsRefused)
	return m
}

// instrument wraps a route's handler: panics become 500s, internal errors
// are logged with their detail, and every answer is counted.
func (s *Server) instrument(rt route, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	name := rt.Method + " " + rt.Path
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("panic in handler", "route", name, "panic", p)
				if sw.status == 0 {
					writeError(sw, r, fmt.Errorf("panic: %v", p))
				}
			}
			s.metrics.requests.WithLabelValues(name, strconv.Itoa(sw.status)).Inc()
			s.metrics.latency.WithLabelValues(name).Observe(time.Since(start).Seconds())
			if sw.status >= 500 {
				s.log.Error("request failed", "route", name, "status", sw.status, "err", sw.err)
			} else {
				s.log.Debug("request", "route", name, "status", sw.status)
			}
		}()
		ctx, err := s.authenticate(r, rt.Auth)
		if err == nil {
			err = h(sw, r.WithContext(ctx))
		}
		if err != nil {
			writeError(sw, r, err)
		}
	})
}
