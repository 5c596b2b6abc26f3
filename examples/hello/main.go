// Command hello is Meridian's demo app: an HTTP server on $PORT that answers
// GET / with where it runs (region, data center, machine, instance) and its
// version, and GET /healthz with its health.
//
// VERSION sets the version it reports (default: $MERIDIAN_DEPLOYMENT), and
// HEALTHY=false makes /healthz fail, to try out failed rollouts.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	version := os.Getenv("VERSION")
	if version == "" {
		version = os.Getenv("MERIDIAN_DEPLOYMENT")
	}
	host, _ := os.Hostname()
	info := map[string]string{
		"region":     os.Getenv("MERIDIAN_REGION"),
		"datacenter": os.Getenv("MERIDIAN_DATACENTER"),
		"machine":    os.Getenv("MERIDIAN_MACHINE"),
		"instance":   os.Getenv("MERIDIAN_INSTANCE"),
		"app":        os.Getenv("MERIDIAN_APP"),
		"service":    os.Getenv("MERIDIAN_SERVICE"),
		"version":    version,
		"hostname":   host,
	}
	healthy := os.Getenv("HEALTHY") != "false"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(info)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !healthy {
			http.Error(w, "unhealthy (HEALTHY=false)", http.StatusInternalServerError)
			return
		}
		w.Write([]byte("ok\n"))
	})
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		log.Fatalf("hello: %v", err)
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
	log.Printf("hello %s listening on %s", version, ln.Addr())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("hello: %v", err)
	}
}
