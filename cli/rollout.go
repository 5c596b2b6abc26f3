package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-run/meridian/api"
)

var instanceCols = []column[api.Instance]{
	{"ID", func(i api.Instance) string { return i.ID }},
	{"SERVICE", func(i api.Instance) string { return i.App + "/" + i.Service }},
	{"REGION", func(i api.Instance) string { return i.Region }},
	{"DATACENTER", func(i api.Instance) string { return i.Datacenter }},
	{"MACHINE", func(i api.Instance) string { return i.Machine }},
	{"STATE", func(i api.Instance) string { return i.State }},
	{"HEALTH", func(i api.Instance) string { return i.Health }},
	{"VERSION", func(i api.Instance) string { return strconv.Itoa(i.Version) }},
	{"RESTARTS", func(i api.Instance) string { return strconv.Itoa(i.Restarts) }},
	{"MESSAGE", func(i api.Instance) string { return i.Message }},
}

var eventCols = []column[api.DeploymentEvent]{
	{"TIME", func(e api.DeploymentEvent) string { return e.At.Local().Format("15:04:05.000") }},
	{"REGION", func(e api.DeploymentEvent) string { return orDash(e.Region) }},
	{"EVENT", func(e api.DeploymentEvent) string { return e.Type }},
	{"MESSAGE", func(e api.DeploymentEvent) string { return e.Message }},
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// warnUnreachable tells on stderr which regions did not answer.
func warnUnreachable(g *globals, un []api.UnreachableRegion) {
	for _, u := range un {
		fmt.Fprintf(g.stderr, "warning: region %s did not answer: %s\n", u.Region, u.Message)
	}
}

func newInstancesCmd(g *globals) *cobra.Command {
	var app, service string
	ls := &cobra.Command{Use: "ls [--app APP --service NAME]", Short: "List instances in every region (of one service with --app and --service)", Args: args(0),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, _ []string) error {
			var list api.InstanceList
			var err error
			switch {
			case service != "":
				a, err := needApp(app)
				if err != nil {
					return err
				}
				list, err = c.ServiceInstances(ctx, a, service)
				if err != nil {
					return err
				}
			case app != "":
				return usagef("--app needs --service")
			default:
				if list, err = c.ListInstances(ctx); err != nil {
					return err
				}
			}
			warnUnreachable(g, list.Unreachable)
			return printList(g, list.Items, instanceCols)
		})}
	ls.Flags().StringVar(&app, "app", "", "the service's app")
	ls.Flags().StringVar(&service, "service", "", "only this service's instances")
	return group("instances", "Inspect instances across regions", ls)
}

// waitDeployment follows a deployment until it finishes, printing each
// region's status as it changes and each new event. It returns nil only
// when the deployment is HEALTHY.
func waitDeployment(ctx context.Context, g *globals, c *api.Client, id string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	seen := map[string]string{}
	events := 0
	start := time.Now()
	for {
		d, err := c.GetDeployment(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("deployment %s not finished after %s (still %s)", id, timeout, seen[""])
			}
			return err
		}
		for _, e := range d.Events[min(events, len(d.Events)):] {
			if e.Type == api.EventFailed || e.Type == api.EventRegionErr || e.Type == api.EventReverted || e.Type == api.EventCanceled {
				fmt.Fprintf(g.stdout, "  %6.1fs  %-4s %s: %s\n", time.Since(start).Seconds(), orDash(e.Region), e.Type, e.Message)
			}
		}
		events = len(d.Events)
		for _, r := range d.Regional {
			line := r.Status + " " + r.Message
			if seen[r.Region] != line {
				seen[r.Region] = line
				fmt.Fprintf(g.stdout, "  %6.1fs  %-4s %-12s %s\n", time.Since(start).Seconds(), r.Region, r.Status, r.Message)
			}
		}
		seen[""] = d.Status
		switch d.Status {
		case api.StatusHealthy:
			fmt.Fprintf(g.stdout, "deployment %s (version %d) is HEALTHY in every region after %.1fs\n", d.ID, d.Version, time.Since(start).Seconds())
			return nil
		case api.StatusDegraded, api.StatusError, api.StatusCanceled, api.StatusSuperseded:
			return fmt.Errorf("deployment %s (version %d) is %s: %s", d.ID, d.Version, d.Status, reason(d))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("deployment %s not finished after %s (still %s)", id, timeout, d.Status)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// reason summarizes why a deployment did not become healthy.
func reason(d api.Deployment) string {
	if d.Message != "" {
		return d.Message
	}
	var parts []string
	for _, r := range d.Regional {
		if r.Status != api.StatusHealthy {
			parts = append(parts, r.Region+" "+r.Status+": "+r.Message)
		}
	}
	return strings.Join(parts, "; ")
}

func newCancelCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "cancel ID", Short: "Cancel a running deployment: the regions it reached go back to their previous deployment", Args: args(1, "ID"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, a []string) error {
			d, err := c.CancelDeployment(ctx, a[0])
			if err != nil {
				return err
			}
			return printOne(g, d, deploymentCols)
		})}
}

func newRegionLifecycleCmds(g *globals) []*cobra.Command {
	test := &cobra.Command{Use: "test ID", Short: "Run a smoke deployment in a region and open it when it passes (admin token)", Args: args(1, "ID"),
		RunE: withAdmin(g, func(ctx context.Context, c *api.Client, a []string) error {
			r, err := c.TestRegion(ctx, a[0])
			if err != nil {
				return err
			}
			if r.Status != api.RegionOpen {
				return fmt.Errorf("region %s failed its smoke test and stays %s: %s", r.ID, r.Status, r.Message)
			}
			return printOne(g, r, regionCols)
		})}
	open := &cobra.Command{Use: "open ID", Short: "Open a region to deploys without a smoke test (admin token)", Args: args(1, "ID"),
		RunE: withAdmin(g, func(ctx context.Context, c *api.Client, a []string) error {
			s := api.RegionOpen
			r, err := c.UpdateRegion(ctx, a[0], api.UpdateRegionRequest{Status: &s})
			if err != nil {
				return err
			}
			return printOne(g, r, regionCols)
		})}
	drain := &cobra.Command{Use: "drain ID", Short: "Stop new deploys to a region; says what keeps running there (admin token)", Args: args(1, "ID"),
		RunE: withAdmin(g, func(ctx context.Context, c *api.Client, a []string) error {
			d, err := c.DrainRegion(ctx, a[0])
			if err != nil {
				return err
			}
			if g.output != "table" {
				return printValue(g, d)
			}
			fmt.Fprintln(g.stdout, d.Message)
			if d.Unreachable != "" {
				fmt.Fprintf(g.stderr, "warning: region %s did not answer: %s\n", d.Region.ID, d.Unreachable)
			}
			return printList(g, d.Services, []column[api.RegionService]{
				{"SERVICE", func(s api.RegionService) string { return s.Org + "/" + s.App + "/" + s.Service }},
				{"VERSION", func(s api.RegionService) string { return strconv.Itoa(s.Version) }},
				{"WANTED", func(s api.RegionService) string { return strconv.Itoa(s.Wanted) }},
				{"INSTANCES", func(s api.RegionService) string { return strconv.Itoa(s.Instances) }},
			})
		})}
	return []*cobra.Command{test, open, drain}
}
