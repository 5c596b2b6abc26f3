// Command meridian is Meridian's single binary: every component (global,
// region, agent, edge, and dev, the whole installation on one machine),
// the instances' shims, and the command line that talks to the global
// API. Run `meridian --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/meridian-run/meridian/cli"
	"github.com/meridian-run/meridian/driver"
)

func main() {
	// Instances of the process driver start as a re-exec of this binary.
	driver.MaybeRunShim()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
