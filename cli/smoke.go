package cli

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"
)

// newSmokeCmd is the region smoke test's workload: a tiny HTTP server on
// $PORT answering /healthz. It ships inside the meridian binary so a new
// region can be tested with nothing else installed.
func newSmokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "smoke", Short: "Serve the region smoke test's HTTP health endpoint on $PORT", Hidden: true, Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			port := os.Getenv("PORT")
			if port == "" {
				port = "8080"
			}
			ln, err := net.Listen("tcp", ":"+port)
			if err != nil {
				return err
			}
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
			go func() {
				<-cmd.Context().Done()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				srv.Shutdown(ctx)
			}()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		}}
}
