package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/definition"
)

func ts(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

var (
	orgCols = []column[api.Organization]{
		{"NAME", func(o api.Organization) string { return o.Name }},
		{"ID", func(o api.Organization) string { return o.ID }},
		{"CREATED", func(o api.Organization) string { return ts(o.CreatedAt) }},
	}
	tokenCols = []column[api.Token]{
		{"ID", func(t api.Token) string { return t.ID }},
		{"NAME", func(t api.Token) string { return t.Name }},
		{"CREATED", func(t api.Token) string { return ts(t.CreatedAt) }},
	}
	edgeTokenCols = []column[api.EdgeToken]{
		{"ID", func(t api.EdgeToken) string { return t.ID }},
		{"NAME", func(t api.EdgeToken) string { return t.Name }},
		{"CREATED", func(t api.EdgeToken) string { return ts(t.CreatedAt) }},
	}
	appCols = []column[api.App]{
		{"NAME", func(a api.App) string { return a.Name }},
		{"HOST", func(a api.App) string { return a.Host }},
		{"ID", func(a api.App) string { return a.ID }},
		{"CREATED", func(a api.App) string { return ts(a.CreatedAt) }},
	}
	serviceCols = []column[api.Service]{
		{"NAME", func(s api.Service) string { return s.Name }},
		{"APP", func(s api.Service) string { return s.App }},
		{"VERSION", func(s api.Service) string { return strconv.Itoa(s.LatestVersion) }},
		{"STATUS", func(s api.Service) string { return s.Status }},
		{"DEPLOYMENT", func(s api.Service) string { return s.LatestDeployment }},
		{"UPDATED", func(s api.Service) string { return ts(s.UpdatedAt) }},
	}
	deploymentCols = []column[api.Deployment]{
		{"ID", func(d api.Deployment) string { return d.ID }},
		{"SERVICE", func(d api.Deployment) string { return d.App + "/" + d.Service }},
		{"VERSION", func(d api.Deployment) string { return strconv.Itoa(d.Version) }},
		{"STATUS", func(d api.Deployment) string { return d.Status }},
		{"REGIONS", func(d api.Deployment) string {
			parts := make([]string, len(d.Regional))
			for i, r := range d.Regional {
				parts[i] = r.Region + ":" + r.Status
			}
			return strings.Join(parts, " ")
		}},
		{"CREATED", func(d api.Deployment) string { return ts(d.CreatedAt) }},
	}
	regionalCols = []column[api.RegionalDeployment]{
		{"REGION", func(r api.RegionalDeployment) string { return r.Region }},
		{"STATUS", func(r api.RegionalDeployment) string { return r.Status }},
		{"INSTANCES", func(r api.RegionalDeployment) string {
			return fmt.Sprintf("%d-%d", r.Definition.Scaling.Min, r.Definition.Scaling.Max)
		}},
		{"TYPE", func(r api.RegionalDeployment) string { return r.Definition.InstanceType.Name }},
		{"GENERATION", func(r api.RegionalDeployment) string { return strconv.FormatInt(r.Generation, 10) }},
		{"MESSAGE", func(r api.RegionalDeployment) string { return r.Message }},
	}
	secretCols = []column[api.Secret]{
		{"NAME", func(s api.Secret) string { return s.Name }},
		{"CREATED", func(s api.Secret) string { return ts(s.CreatedAt) }},
		{"UPDATED", func(s api.Secret) string { return ts(s.UpdatedAt) }},
	}
	regionCols = []column[api.Region]{
		{"ID", func(r api.Region) string { return r.ID }},
		{"NAME", func(r api.Region) string { return r.Name }},
		{"STATUS", func(r api.Region) string { return r.Status }},
		{"LAT", func(r api.Region) string { return strconv.FormatFloat(r.Latitude, 'f', -1, 64) }},
		{"LON", func(r api.Region) string { return strconv.FormatFloat(r.Longitude, 'f', -1, 64) }},
		{"URL", func(r api.Region) string { return r.URL }},
	}
)

// withClient wraps an organization command's body.
func withClient(g *globals, fn func(ctx context.Context, c *api.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := g.client()
		if err != nil {
			return err
		}
		return fn(cmd.Context(), c, args)
	}
}

// withAdmin wraps an operator command's body.
func withAdmin(g *globals, fn func(ctx context.Context, c *api.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := g.adminClient()
		if err != nil {
			return err
		}
		return fn(cmd.Context(), c, args)
	}
}

func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Args: args(0), RunE: func(cmd *cobra.Command, _ []string) error {
		return usagef("%s needs a subcommand: %s", cmd.CommandPath(), strings.Join(subNames(cmd), ", "))
	}}
	cmd.AddCommand(subs...)
	return cmd
}

func subNames(cmd *cobra.Command) []string {
	var names []string
	for _, c := range cmd.Commands() {
		names = append(names, c.Name())
	}
	return names
}

func newOrgsCmd(g *globals) *cobra.Command {
	var idem string
	create := &cobra.Command{Use: "create NAME", Short: "Create an organization (admin token)", Args: args(1, "NAME"),
		RunE: withAdmin(g, func(ctx context.Context, c *api.Client, a []string) error {
			o, err := c.CreateOrg(ctx, a[0], idem)
			if err != nil {
				return err
			}
			return printOne(g, o, orgCols)
		})}
	create.Flags().StringVar(&idem, "idempotency-key", "", "key that makes a retried create safe")
	ls := &cobra.Command{Use: "ls", Short: "List organizations (admin token)", Args: args(0),
		RunE: withAdmin(g, func(ctx context.Context, c *api.Client, _ []string) error {
			items, err := api.All(func(o api.ListOptions) (api.List[api.Organization], error) { return c.ListOrgs(ctx, o) })
			if err != nil {
				return err
			}
			return printList(g, items, orgCols)
		})}
	get := &cobra.Command{Use: "get NAME", Short: "Show an organization (admin token)", Args: args(1, "NAME"),
		RunE: withAdmin(g, func(ctx context.Context, c *api.Client, a []string) error {
			o, err := c.GetOrg(ctx, a[0])
			if err != nil {
				return err
			}
			return printOne(g, o, orgCols)
		})}
	return group("orgs", "Manage organizations (operators)", create, ls, get)
}

// printNewToken prints a token just created, whose value is shown this
// once: a sentence and the value, or the whole answer as JSON or YAML.
func printNewToken(g *globals, kind, id, name, value string, answer any) error {
	if g.output != "table" {
		return printValue(g, answer)
	}
	_, err := fmt.Fprintf(g.stdout, "%s %s (%s) created; it is shown only once:\n%s\n", kind, id, name, value)
	return err
}

func newTokensCmd(g *globals) *cobra.Command {
	var org, name string
	create := &cobra.Command{Use: "create", Short: "Create an API token: with --org and the admin token for that organization, else another token of your organization", Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var t api.Token
			if org != "" {
				c, err := g.adminClient()
				if err != nil {
					return err
				}
				if t, err = c.CreateOrgToken(ctx, org, name, ""); err != nil {
					return err
				}
			} else {
				c, err := g.client()
				if err != nil {
					return err
				}
				if t, err = c.CreateToken(ctx, name, ""); err != nil {
					return err
				}
			}
			return printNewToken(g, "token", t.ID, t.Name, t.Value, t)
		}}
	create.Flags().StringVar(&org, "org", "", "organization to create the token for (admin token)")
	create.Flags().StringVar(&name, "name", "", "a name to recognise the token by")
	ls := &cobra.Command{Use: "ls", Short: "List your organization's tokens", Args: args(0),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, _ []string) error {
			items, err := api.All(func(o api.ListOptions) (api.List[api.Token], error) { return c.ListTokens(ctx, o) })
			if err != nil {
				return err
			}
			return printList(g, items, tokenCols)
		})}
	rm := &cobra.Command{Use: "rm ID", Short: "Revoke a token", Args: args(1, "ID"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, a []string) error {
			return c.DeleteToken(ctx, a[0])
		})}
	return group("tokens", "Manage API tokens", create, ls, rm)
}

func newEdgeTokensCmd(g *globals) *cobra.Command {
	var idem string
	create := &cobra.Command{Use: "create NAME", Short: "Create an edge token (admin token): it may only read the region registry; give it to `meridian edge --global-token-file`", Args: args(1, "NAME"),
		RunE: withAdmin(g, func(ctx context.Context, c *api.Client, a []string) error {
			t, err := c.CreateEdgeToken(ctx, a[0], idem)
			if err != nil {
				return err
			}
			return printNewToken(g, "edge token", t.ID, t.Name, t.Value, t)
		})}
	create.Flags().StringVar(&idem, "idempotency-key", "", "key that makes a retried create safe (a retry gets the same token)")
	ls := &cobra.Command{Use: "ls", Short: "List the edge tokens, without their values (admin token)", Args: args(0),
		RunE: withAdmin(g, func(ctx context.Context, c *api.Client, _ []string) error {
			items, err := api.All(func(o api.ListOptions) (api.List[api.EdgeToken], error) { return c.ListEdgeTokens(ctx, o) })
			if err != nil {
				return err
			}
			return printList(g, items, edgeTokenCols)
		})}
	rm := &cobra.Command{Use: "rm ID", Short: "Revoke an edge token (admin token)", Args: args(1, "ID"),
		RunE: withAdmin(g, func(ctx context.Context, c *api.Client, a []string) error {
			return c.DeleteEdgeToken(ctx, a[0])
		})}
	return group("edge-tokens", "Manage the edges' read-only tokens (operators)", create, ls, rm)
}

func newAppsCmd(g *globals) *cobra.Command {
	create := &cobra.Command{Use: "create NAME", Short: "Create an app", Args: args(1, "NAME"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, a []string) error {
			app, err := c.CreateApp(ctx, a[0], "")
			if err != nil {
				return err
			}
			return printOne(g, app, appCols)
		})}
	ls := &cobra.Command{Use: "ls", Short: "List apps", Args: args(0),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, _ []string) error {
			items, err := api.All(func(o api.ListOptions) (api.List[api.App], error) { return c.ListApps(ctx, o) })
			if err != nil {
				return err
			}
			return printList(g, items, appCols)
		})}
	get := &cobra.Command{Use: "get NAME", Short: "Show an app", Args: args(1, "NAME"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, a []string) error {
			app, err := c.GetApp(ctx, a[0])
			if err != nil {
				return err
			}
			return printOne(g, app, appCols)
		})}
	rm := &cobra.Command{Use: "rm NAME", Short: "Delete an app that has no services", Args: args(1, "NAME"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, a []string) error {
			return c.DeleteApp(ctx, a[0])
		})}
	return group("apps", "Manage apps", create, ls, get, rm)
}

// contentTypeOf guesses a definition document's media type from its file
// name, falling back to YAML (which also reads JSON).
func contentTypeOf(path string, doc []byte) string {
	if strings.HasSuffix(path, ".json") || bytes.HasPrefix(bytes.TrimSpace(doc), []byte("{")) {
		return "application/json"
	}
	return "application/yaml"
}

func newDeployCmd(g *globals) *cobra.Command {
	var file, app, idem string
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "deploy -f FILE [--app APP] [--wait]",
		Short: "Create or update a service from a deployment definition; the app is created if missing",
		Args:  args(0),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, _ []string) error {
			return deployFile(ctx, g, c, file, app, idem, wait, timeout)
		}),
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the rollout region by region; exit 0 only when HEALTHY")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "with --wait, how long to follow the rollout")
	cmd.Flags().StringVarP(&file, "file", "f", "", "definition file (YAML or JSON), or - for standard input")
	cmd.Flags().StringVar(&app, "app", "", "app to deploy into (default $MERIDIAN_APP, else the service's name)")
	cmd.Flags().StringVar(&idem, "idempotency-key", "", "key that makes a retried deploy safe")
	return cmd
}

// deployFile sends a definition file to app (created when missing; by
// default named after the service) and, with wait, follows the rollout.
func deployFile(ctx context.Context, g *globals, c *api.Client, file, app, idem string, wait bool, timeout time.Duration) error {
	doc, err := readDefinitionFile(ctx, g, file)
	if err != nil {
		return err
	}
	def, err := definition.Parse(doc)
	if err != nil {
		return definitionErrors{err}
	}
	if app == "" {
		app = os.Getenv("MERIDIAN_APP")
	}
	if app == "" {
		app = def.Name
	}
	if _, err := c.GetApp(ctx, app); isStatus(err, http.StatusNotFound) {
		if _, err := c.CreateApp(ctx, app, ""); err != nil && !isStatus(err, http.StatusConflict) {
			return fmt.Errorf("creating app %q: %w", app, err)
		}
	} else if err != nil {
		return err
	}
	d, err := c.Deploy(ctx, app, doc, contentTypeOf(file, doc), idem)
	if err != nil {
		return err
	}
	if g.output != "table" && !wait {
		return printValue(g, d)
	}
	fmt.Fprintf(g.stdout, "deployment %s: %s/%s version %d, %s\n", d.ID, d.App, d.Service, d.Version, d.Status)
	printImage(g, d.Image, d.ImageDigest)
	if wait {
		return waitDeployment(ctx, g, c, d.ID, timeout)
	}
	return printList(g, d.Regional, regionalCols)
}

// printImage prints, under a table, the image as written and the digest
// every region runs (nothing for a command-only service).
func printImage(g *globals, image, digest string) {
	if image == "" {
		return
	}
	fmt.Fprintf(g.stdout, "image: %s\n", image)
	if digest != "" {
		fmt.Fprintf(g.stdout, "image digest: %s\n", digest)
	}
}

func isStatus(err error, status int) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Status == status
}

func appFlag(cmd *cobra.Command, app *string) {
	cmd.Flags().StringVar(app, "app", "", "the service's app (default $MERIDIAN_APP)")
}

func needApp(app string) (string, error) {
	if app == "" {
		app = os.Getenv("MERIDIAN_APP")
	}
	if app == "" {
		return "", usagef("--app is required (or set MERIDIAN_APP)")
	}
	return app, nil
}

func newServicesCmd(g *globals) *cobra.Command {
	var app string
	ls := &cobra.Command{Use: "ls --app APP", Short: "List an app's services", Args: args(0),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, _ []string) error {
			a, err := needApp(app)
			if err != nil {
				return err
			}
			items, err := api.All(func(o api.ListOptions) (api.List[api.Service], error) { return c.ListServices(ctx, a, o) })
			if err != nil {
				return err
			}
			return printList(g, items, serviceCols)
		})}
	get := &cobra.Command{Use: "get NAME --app APP", Short: "Show a service and its latest deployment per region", Args: args(1, "NAME"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, args []string) error {
			a, err := needApp(app)
			if err != nil {
				return err
			}
			svc, err := c.GetService(ctx, a, args[0])
			if err != nil {
				return err
			}
			if g.output != "table" {
				return printValue(g, svc)
			}
			if err := printOne(g, svc, serviceCols); err != nil {
				return err
			}
			printImage(g, svc.Image, svc.ImageDigest)
			if svc.LatestDeployment == "" {
				return nil
			}
			d, err := c.GetDeployment(ctx, svc.LatestDeployment)
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout)
			if err := printList(g, d.Regional, regionalCols); err != nil {
				return err
			}
			insts, err := c.ServiceInstances(ctx, a, args[0])
			if err != nil {
				return err
			}
			warnUnreachable(g, insts.Unreachable)
			fmt.Fprintln(g.stdout)
			return printList(g, insts.Items, instanceCols)
		})}
	rm := &cobra.Command{Use: "rm NAME --app APP", Short: "Delete a service", Args: args(1, "NAME"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, args []string) error {
			a, err := needApp(app)
			if err != nil {
				return err
			}
			return c.DeleteService(ctx, a, args[0])
		})}
	for _, c := range []*cobra.Command{ls, get, rm} {
		appFlag(c, &app)
	}
	return group("services", "Inspect and delete services (deploy creates and updates them)", ls, get, rm)
}

func newDeploymentsCmd(g *globals) *cobra.Command {
	var app, service string
	ls := &cobra.Command{Use: "ls --app APP --service NAME", Short: "List a service's deployments, newest first", Args: args(0),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, _ []string) error {
			a, err := needApp(app)
			if err != nil {
				return err
			}
			if service == "" {
				return usagef("--service is required")
			}
			items, err := api.All(func(o api.ListOptions) (api.List[api.Deployment], error) {
				return c.ListDeployments(ctx, a, service, o)
			})
			if err != nil {
				return err
			}
			return printList(g, items, deploymentCols)
		})}
	appFlag(ls, &app)
	ls.Flags().StringVar(&service, "service", "", "the service")
	get := &cobra.Command{Use: "get ID", Short: "Show a deployment and its regional deployments", Args: args(1, "ID"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, args []string) error {
			d, err := c.GetDeployment(ctx, args[0])
			if err != nil {
				return err
			}
			if g.output != "table" {
				return printValue(g, d)
			}
			if err := printOne(g, d, deploymentCols); err != nil {
				return err
			}
			printImage(g, d.Image, d.ImageDigest)
			fmt.Fprintln(g.stdout)
			if err := printList(g, d.Regional, regionalCols); err != nil {
				return err
			}
			if len(d.Events) > 0 {
				fmt.Fprintln(g.stdout)
				return printList(g, d.Events, eventCols)
			}
			return nil
		})}
	return group("deployments", "Inspect and cancel deployments", ls, get, newCancelCmd(g))
}

func newSecretsCmd(g *globals) *cobra.Command {
	var value, fromFile string
	set := &cobra.Command{Use: "set NAME [--value V | --from-file F]", Short: "Create or replace a secret (reads standard input without --value or --from-file)", Args: args(1, "NAME"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, args []string) error {
			v := value
			switch {
			case value != "" && fromFile != "":
				return usagef("--value and --from-file exclude each other")
			case fromFile != "":
				b, err := os.ReadFile(fromFile)
				if err != nil {
					return fmt.Errorf("--from-file: %w", err)
				}
				v = string(b)
			case value == "":
				b, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
				if err != nil {
					return fmt.Errorf("reading standard input: %w", err)
				}
				v = strings.TrimSuffix(string(b), "\n")
			}
			s, err := c.PutSecret(ctx, args[0], v)
			if err != nil {
				return err
			}
			return printOne(g, s, secretCols)
		})}
	set.Flags().StringVar(&value, "value", "", "the secret's value")
	set.Flags().StringVar(&fromFile, "from-file", "", "read the value from a file")
	ls := &cobra.Command{Use: "ls", Short: "List secrets (names only)", Args: args(0),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, _ []string) error {
			items, err := api.All(func(o api.ListOptions) (api.List[api.Secret], error) { return c.ListSecrets(ctx, o) })
			if err != nil {
				return err
			}
			return printList(g, items, secretCols)
		})}
	rm := &cobra.Command{Use: "rm NAME", Short: "Delete a secret", Args: args(1, "NAME"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, args []string) error {
			return c.DeleteSecret(ctx, args[0])
		})}
	return group("secrets", "Manage secrets (write-only values)", set, ls, rm)
}

func newRegionsCmd(g *globals) *cobra.Command {
	var (
		name, url, status string
		lat, lon          float64
	)
	ls := &cobra.Command{Use: "ls", Short: "List the region registry", Args: args(0),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, _ []string) error {
			items, err := api.All(func(o api.ListOptions) (api.List[api.Region], error) { return c.ListRegions(ctx, o) })
			if err != nil {
				return err
			}
			return printList(g, items, regionCols)
		})}
	get := &cobra.Command{Use: "get ID", Short: "Show a region", Args: args(1, "ID"),
		RunE: withClient(g, func(ctx context.Context, c *api.Client, a []string) error {
			r, err := c.GetRegion(ctx, a[0])
			if err != nil {
				return err
			}
			return printOne(g, r, regionCols)
		})}
	add := &cobra.Command{Use: "add ID --url URL --lat LAT --lon LON", Short: "Register a region (admin token); it starts as provisioning", Args: args(1, "ID"),
		RunE: withAdmin(g, func(ctx context.Context, c *api.Client, a []string) error {
			r, err := c.CreateRegion(ctx, api.CreateRegionRequest{ID: a[0], Name: name, Latitude: lat, Longitude: lon, URL: url}, "")
			if err != nil {
				return err
			}
			return printOne(g, r, regionCols)
		})}
	add.Flags().StringVar(&name, "name", "", "display name (default: the id)")
	add.Flags().StringVar(&url, "url", "", "URL of the region's control plane")
	add.Flags().Float64Var(&lat, "lat", 0, "latitude")
	add.Flags().Float64Var(&lon, "lon", 0, "longitude")
	update := &cobra.Command{Use: "update ID [--status S] [--url URL] [--name N] [--lat LAT] [--lon LON]", Short: "Change a region (admin token)", Args: args(1, "ID")}
	update.RunE = withAdmin(g, func(ctx context.Context, c *api.Client, a []string) error {
		var req api.UpdateRegionRequest
		fl := update.Flags()
		if fl.Changed("status") {
			req.Status = &status
		}
		if fl.Changed("url") {
			req.URL = &url
		}
		if fl.Changed("name") {
			req.Name = &name
		}
		if fl.Changed("lat") {
			req.Latitude = &lat
		}
		if fl.Changed("lon") {
			req.Longitude = &lon
		}
		r, err := c.UpdateRegion(ctx, a[0], req)
		if err != nil {
			return err
		}
		return printOne(g, r, regionCols)
	})
	update.Flags().StringVar(&status, "status", "", "provisioning, testing, open or draining")
	update.Flags().StringVar(&url, "url", "", "URL of the region's control plane")
	update.Flags().StringVar(&name, "name", "", "display name")
	update.Flags().Float64Var(&lat, "lat", 0, "latitude")
	update.Flags().Float64Var(&lon, "lon", 0, "longitude")
	return group("regions", "Inspect and manage the region registry", append([]*cobra.Command{ls, get, add, update}, newRegionLifecycleCmds(g)...)...)
}
