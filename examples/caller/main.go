// Command caller is Meridian's demo mesh client: an HTTP server on $PORT
// that, asked to, calls another service by name through the private mesh
// (with the system resolver, from plain code) and reports what answered.
//
//	GET /call?url=http://api.shop.internal:8080/&retries=1
//	    one GET of url on a new connection, retried up to retries times on
//	    failure; answers JSON {ok, attempts, status, answer, errors, ms}
//	    where answer is the target's JSON body (or its text)
//	GET /resolve?name=api.shop.internal
//	    the addresses the system resolver gives; JSON {addrs, error, ms}
//	GET /healthz
//	    ok
//	GET /
//	    where it runs, like examples/hello
package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// callResult is the answer of /call.
type callResult struct {
	OK       bool            `json:"ok"`
	Attempts int             `json:"attempts"`
	Status   int             `json:"status,omitempty"`
	Answer   json.RawMessage `json:"answer,omitempty"`
	Errors   []string        `json:"errors,omitempty"`
	MS       float64         `json:"ms"`
}

// resolveResult is the answer of /resolve.
type resolveResult struct {
	Addrs []string `json:"addrs"`
	Error string   `json:"error,omitempty"`
	MS    float64  `json:"ms"`
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// call GETs url once on a new connection.
func call(ctx context.Context, url string) (int, []byte, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, nil, err
	}
	if resp.StatusCode >= 500 {
		return resp.StatusCode, b, errors.New(resp.Status)
	}
	return resp.StatusCode, b, nil
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	info := map[string]string{
		"region":     os.Getenv("MERIDIAN_REGION"),
		"datacenter": os.Getenv("MERIDIAN_DATACENTER"),
		"machine":    os.Getenv("MERIDIAN_MACHINE"),
		"instance":   os.Getenv("MERIDIAN_INSTANCE"),
		"org":        os.Getenv("MERIDIAN_ORG"),
		"app":        os.Getenv("MERIDIAN_APP"),
		"service":    os.Getenv("MERIDIAN_SERVICE"),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, info) })
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /call", func(w http.ResponseWriter, r *http.Request) {
		url := r.URL.Query().Get("url")
		if url == "" {
			http.Error(w, "url: required", http.StatusBadRequest)
			return
		}
		retries := 0
		if s := r.URL.Query().Get("retries"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 || n > 10 {
				http.Error(w, "retries: want 0 to 10", http.StatusBadRequest)
				return
			}
			retries = n
		}
		start := time.Now()
		var res callResult
		for res.Attempts <= retries {
			res.Attempts++
			status, body, err := call(r.Context(), url)
			res.Status = status
			if err != nil {
				res.Errors = append(res.Errors, err.Error())
				continue
			}
			res.OK = true
			if json.Valid(body) {
				res.Answer = body
			} else {
				res.Answer, _ = json.Marshal(string(body))
			}
			break
		}
		res.MS = float64(time.Since(start).Microseconds()) / 1000
		writeJSON(w, res)
	})
	mux.HandleFunc("GET /resolve", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("name")
		if name == "" {
			http.Error(w, "name: required", http.StatusBadRequest)
			return
		}
		start := time.Now()
		addrs, err := net.DefaultResolver.LookupHost(r.Context(), name)
		res := resolveResult{Addrs: addrs, MS: float64(time.Since(start).Microseconds()) / 1000}
		if res.Addrs == nil {
			res.Addrs = []string{}
		}
		if err != nil {
			res.Error = err.Error()
		}
		writeJSON(w, res)
	})
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		log.Fatalf("caller: %v", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	log.Printf("caller listening on %s", ln.Addr())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("caller: %v", err)
	}
}
