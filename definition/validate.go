package definition

import (
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/meridian-run/meridian/api"
)

// Bounds on definitions; see the package documentation.
const (
	// DefaultMaxScale is the default of Limits.MaxScale.
	DefaultMaxScale = 100
	// DefaultMaxRegions is the default of Limits.MaxRegions.
	DefaultMaxRegions = 100
	// MaxListLen bounds every list of a definition except regions.
	MaxListLen = 1000
	// MaxStringLen bounds every string of a definition except env values.
	MaxStringLen = 4096
	// MaxEnvValueLen bounds env values, in bytes.
	MaxEnvValueLen = 64 << 10
	// maxSecretNameLen bounds secret names.
	maxSecretNameLen = 128
	// maxDurationLen bounds duration strings.
	maxDurationLen = 64
)

// Defaults filled in by Derive.
const (
	DefaultGracePeriod    = 10 * time.Second
	DefaultInterval       = 5 * time.Second
	DefaultTimeout        = 2 * time.Second
	DefaultRestartLimit   = 3
	DefaultHealthDeadline = 5 * time.Minute
)

// Limits are the operator's bounds on definitions. Zero fields take their
// defaults.
type Limits struct {
	// MaxScale is the largest scaling max, in instances per region
	// (default DefaultMaxScale).
	MaxScale int
	// MaxRegions is the largest number of regions (default DefaultMaxRegions).
	MaxRegions int
}

// Options configure Validate and Derive.
type Options struct {
	// Catalogue lists the instance types definitions may name. A catalogue
	// without types means DefaultCatalogue().
	Catalogue Catalogue
	// Limits bound definitions.
	Limits Limits
	// SecretExists reports whether the organization has a secret of that
	// name; nil means secrets are not checked.
	SecretExists func(name string) bool
}

// catalogue returns the catalogue in effect.
func (o Options) catalogue() Catalogue {
	if len(o.Catalogue.Types) == 0 {
		return Catalogue{Default: "small", Types: defaultTypes}
	}
	return o.Catalogue
}

// limits returns the limits in effect.
func (o Options) limits() Limits {
	l := o.Limits
	if l.MaxScale <= 0 {
		l.MaxScale = DefaultMaxScale
	}
	if l.MaxRegions <= 0 {
		l.MaxRegions = DefaultMaxRegions
	}
	return l
}

// Validate checks def against every rule of a deployment definition and
// returns all violations at once, as Errors, or nil when def is valid. The
// errors follow the order of the definition's fields and entries.
func Validate(def api.Definition, opts Options) error {
	v := &validator{def: &def, opts: opts, cat: opts.catalogue(), limits: opts.limits()}
	v.name()
	v.serviceType()
	v.regions()
	v.program()
	v.ports()
	v.routes()
	v.env()
	v.scalings()
	v.instanceTypes()
	v.datacenters()
	v.healthChecks()
	v.strategy()
	return v.errs.err()
}

// validator holds the state of one Validate call.
type validator struct {
	def       *api.Definition
	opts      Options
	cat       Catalogue
	limits    Limits
	regionIdx map[string]int // region id -> index of first occurrence
	errs      collector
}

func (v *validator) name() {
	checkLabel(&v.errs, "name", v.def.Name, "name")
}

func (v *validator) serviceType() {
	switch v.def.Type {
	case "", api.TypeWeb, api.TypeWorker:
	default:
		v.errs.add("type", "must be web or worker, got %s", q(v.def.Type))
	}
}

func (v *validator) regions() {
	regions := v.def.Regions
	v.regionIdx = make(map[string]int, len(regions))
	if len(regions) == 0 {
		v.errs.add("regions", "at least one region is required")
	}
	if len(regions) > v.limits.MaxRegions {
		v.errs.add("regions", "at most %d regions are allowed, got %d", v.limits.MaxRegions, len(regions))
	}
	for i, r := range regions {
		checkLabel(&v.errs, at("regions", i), r, "region id")
		if j, dup := v.regionIdx[r]; dup {
			v.errs.add(at("regions", i), "duplicate region %s (also %s)", q(r), at("regions", j))
			continue
		}
		v.regionIdx[r] = i
	}
}

// program checks image, registry_secret, command and args.
func (v *validator) program() {
	d := v.def
	if d.Image == "" && len(d.Command) == 0 {
		v.errs.add("image", "one of image or command is required")
	}
	if v.text("image", d.Image, MaxStringLen) && d.Image != "" {
		v.imageRef(d.Image)
	}
	if d.RegistrySecret != "" {
		if d.Image == "" {
			v.errs.add("registry_secret", "only allowed with image: it names the credentials of the image's registry")
		}
		v.secretRef("registry_secret", d.RegistrySecret)
	}
	v.stringList("command", d.Command)
	if len(d.Command) > 0 && d.Command[0] == "" {
		v.errs.add("command[0]", "the program must not be empty")
	}
	v.stringList("args", d.Args)
}

// stringList checks the length of list and of its strings.
func (v *validator) stringList(list string, ss []string) {
	if v.tooLong(list, len(ss), MaxListLen) {
		return
	}
	for i, s := range ss {
		if len(s) > MaxStringLen {
			v.errs.add(at(list, i), "at most %d bytes are allowed, got %d", MaxStringLen, len(s))
		}
	}
}

func (v *validator) ports() {
	ports := v.def.Ports
	if v.tooLong("ports", len(ports), MaxListLen) {
		return
	}
	for i, p := range ports {
		if p.Port < 1 || p.Port > 65535 {
			v.errs.add(field(at("ports", i), "port"), "must be between 1 and 65535, got %d", p.Port)
		} else if j := portIndex(ports[:i], p.Port); j >= 0 {
			v.errs.add(field(at("ports", i), "port"), "duplicate port %d (also %s)", p.Port, at("ports", j))
		}
		switch p.Protocol {
		case "", "http", "http2", "tcp":
		default:
			v.errs.add(field(at("ports", i), "protocol"), "must be http, http2 or tcp, got %s", q(p.Protocol))
		}
	}
}

func (v *validator) routes() {
	routes := v.def.Routes
	if len(routes) > 0 && v.def.Type == api.TypeWorker {
		v.errs.add("routes", "routes are only allowed for services of type web")
	}
	if v.tooLong("routes", len(routes), MaxListLen) {
		return
	}
	for i, r := range routes {
		path := at("routes", i)
		if j := portIndex(v.def.Ports, r.Port); j < 0 {
			v.errs.add(field(path, "port"), "port %d is not declared in ports", r.Port)
		} else if v.def.Ports[j].Protocol == "tcp" {
			v.errs.add(field(path, "port"), "port %d has protocol tcp: routes need an http or http2 port", r.Port)
		}
		if !v.urlPath(field(path, "path"), r.Path) {
			continue
		}
		for j := range i {
			if routes[j].Path == r.Path {
				v.errs.add(field(path, "path"), "duplicate path %s (also %s)", q(r.Path), at("routes", j))
				break
			}
		}
	}
}

func (v *validator) env() {
	env := v.def.Env
	if v.tooLong("env", len(env), MaxListLen) {
		return
	}
	owners := make(map[owner]ref, len(env))
	for i, e := range env {
		v.envKey(i, e.Key)
		switch {
		case e.Value != "" && e.Secret != "":
			v.errs.add(at("env", i), "set value or secret, not both")
		case e.Secret != "":
			v.secret(i, e.Secret)
		}
		if len(e.Value) > MaxEnvValueLen {
			v.errs.add(field(at("env", i), "value"), "at most %d bytes are allowed, got %d", MaxEnvValueLen, len(e.Value))
		}
		v.scopes("env", i, e.Scopes, e.Key, owners)
	}
}

func (v *validator) envKey(i int, key string) {
	path := field(at("env", i), "key")
	switch {
	case key == "":
		v.errs.add(path, "required")
	case len(key) > MaxStringLen || !isIdentifier(key):
		v.errs.add(path, "%s is not a valid variable name: want letters, digits and '_', not starting with a digit", q(key))
	case key == "PORT":
		v.errs.add(path, "PORT is reserved: the platform sets it")
	case strings.HasPrefix(key, "MERIDIAN_"):
		v.errs.add(path, "%s is reserved: the MERIDIAN_ prefix belongs to the platform", key)
	}
}

// imageRef checks that ref parses as an image reference (the syntax
// Docker and go-containerregistry accept: [registry/]repository[:tag] or
// [registry/]repository@sha256:<hex>). Whether it exists is for the
// global control plane to find out at deploy.
func (v *validator) imageRef(ref string) {
	if strings.Contains(ref, "://") {
		v.errs.add("image", "%s must not name a scheme: write [registry/]repository[:tag] (plain HTTP is for loopback registries and those the operator names insecure)", q(ref))
		return
	}
	if _, err := name.ParseReference(ref); err != nil {
		v.errs.add("image", "%s is not an image reference: want [registry/]repository[:tag] or [registry/]repository@sha256:<64 hex digits>, the repository in lowercase", q(ref))
	}
}

func (v *validator) secret(i int, name string) {
	v.secretRef(field(at("env", i), "secret"), name)
}

// secretRef checks a reference at path to an organization secret.
func (v *validator) secretRef(path, name string) {
	switch {
	case !ValidSecretName(name):
		v.errs.add(path, "%s is not a valid secret name: want 1 to %d letters, digits, '_', '.' or '-', starting with a letter, digit or '_'", q(name), maxSecretNameLen)
	case v.opts.SecretExists != nil && !v.opts.SecretExists(name):
		v.errs.add(path, "secret %s does not exist", q(name))
	}
}

func (v *validator) scalings() {
	list := v.def.Scalings
	if v.tooLong("scalings", len(list), MaxListLen) {
		return
	}
	owners := make(map[owner]ref, len(list))
	for i, s := range list {
		path := at("scalings", i)
		if s.Min < 0 {
			v.errs.add(field(path, "min"), "must be at least 0, got %d", s.Min)
		}
		switch {
		case s.Max < 0:
			v.errs.add(field(path, "max"), "must be at least 0, got %d", s.Max)
		case s.Max > v.limits.MaxScale:
			v.errs.add(field(path, "max"), "must be at most %d (the per-region limit), got %d", v.limits.MaxScale, s.Max)
		}
		if s.Min > s.Max && s.Max >= 0 {
			v.errs.add(path, "min %d is greater than max %d", s.Min, s.Max)
		}
		v.scopes("scalings", i, s.Scopes, "", owners)
	}
}

func (v *validator) instanceTypes() {
	list := v.def.InstanceTypes
	if v.tooLong("instance_types", len(list), MaxListLen) {
		return
	}
	owners := make(map[owner]ref, len(list))
	for i, it := range list {
		path := field(at("instance_types", i), "type")
		if it.Type == "" {
			v.errs.add(path, "required")
		} else if _, ok := v.cat.Lookup(it.Type); !ok {
			v.errs.add(path, "unknown instance type %s (known: %s)", q(it.Type), v.typeNames())
		}
		v.scopes("instance_types", i, it.Scopes, "", owners)
	}
}

// typeNames lists the catalogue's type names for messages.
func (v *validator) typeNames() string {
	names := make([]string, len(v.cat.Types))
	for i, t := range v.cat.Types {
		names[i] = t.Name
	}
	return strings.Join(names, ", ")
}

func (v *validator) datacenters() {
	list := v.def.Datacenters
	if v.tooLong("datacenters", len(list), MaxListLen) {
		return
	}
	owners := make(map[owner]ref, len(list))
	for i, rule := range list {
		v.allow(field(at("datacenters", i), "allow"), rule.Allow)
		v.scopes("datacenters", i, rule.Scopes, "", owners)
	}
}

// allow checks a data center allow list.
func (v *validator) allow(path string, ids []string) {
	if len(ids) == 0 {
		v.errs.add(path, "at least one data center is required")
	}
	if v.tooLong(path, len(ids), MaxListLen) {
		return
	}
	for i, id := range ids {
		checkLabel(&v.errs, at(path, i), id, "data center id")
		for j := range i {
			if ids[j] == id {
				v.errs.add(at(path, i), "duplicate data center %s (also %s)", q(id), at(path, j))
				break
			}
		}
	}
}

func (v *validator) healthChecks() {
	checks := v.def.HealthChecks
	if v.tooLong("health_checks", len(checks), MaxListLen) {
		return
	}
	for i, hc := range checks {
		v.healthCheck(at("health_checks", i), hc)
	}
}

func (v *validator) healthCheck(path string, hc api.HealthCheck) {
	if portIndex(v.def.Ports, hc.Port) < 0 {
		v.errs.add(field(path, "port"), "port %d is not declared in ports", hc.Port)
	}
	switch {
	case (hc.TCP == nil) == (hc.HTTP == nil):
		v.errs.add(path, "set exactly one of tcp (tcp: {}) or http (http: {path: /...})")
	case hc.HTTP != nil:
		v.urlPath(field(path, "http.path"), hc.HTTP.Path)
	}
	v.duration(field(path, "grace_period"), hc.GracePeriod, true)
	interval, iok := v.duration(field(path, "interval"), hc.Interval, false)
	timeout, tok := v.duration(field(path, "timeout"), hc.Timeout, false)
	if iok && tok {
		interval, timeout = orDuration(interval, DefaultInterval), orDuration(timeout, DefaultTimeout)
		if timeout >= interval {
			v.errs.add(field(path, "timeout"), "timeout %s must be less than interval %s", timeout, interval)
		}
	}
	if hc.RestartLimit != nil && *hc.RestartLimit < 0 {
		v.errs.add(field(path, "restart_limit"), "must be at least 0, got %d", *hc.RestartLimit)
	}
}

func (v *validator) strategy() {
	s := v.def.Strategy
	if s == nil {
		return
	}
	switch s.Type {
	case "", api.StrategyRolling, api.StrategyAllAtOnce:
	default:
		v.errs.add("strategy.type", "must be rolling or all_at_once, got %s", q(s.Type))
	}
	if s.MaxParallelRegions < 0 {
		v.errs.add("strategy.max_parallel_regions", "must be at least 0 (0 means all), got %d", s.MaxParallelRegions)
	}
	v.canaries(s.CanaryRegions)
	switch s.OnFailure {
	case "", api.OnFailureLocal, api.OnFailureAll:
	default:
		v.errs.add("strategy.on_failure", "must be fail_local or rollback_all, got %s", q(s.OnFailure))
	}
	v.duration("strategy.health_deadline", s.HealthDeadline, false)
}

func (v *validator) canaries(ids []string) {
	const list = "strategy.canary_regions"
	if v.tooLong(list, len(ids), MaxListLen) {
		return
	}
	for i, id := range ids {
		if _, ok := v.regionIdx[id]; !ok {
			v.errs.add(at(list, i), "region %s is not in regions", q(id))
			continue
		}
		for j := range i {
			if ids[j] == id {
				v.errs.add(at(list, i), "duplicate region %s (also %s)", q(id), at(list, j))
				break
			}
		}
	}
}

// duration parses d; an empty d is valid and zero. Zero is refused unless
// zeroOK, and negative durations always are. ok is false after an error.
func (v *validator) duration(path string, d api.Duration, zeroOK bool) (_ time.Duration, ok bool) {
	if d == "" {
		return 0, true
	}
	if len(d) > maxDurationLen {
		v.errs.add(path, "invalid duration: at most %d bytes are allowed", maxDurationLen)
		return 0, false
	}
	t, err := d.Std()
	switch {
	case err != nil:
		v.errs.add(path, "invalid duration %s: want a duration such as \"5s\" or \"1m30s\"", q(string(d)))
		return 0, false
	case t < 0 && zeroOK:
		v.errs.add(path, "must not be negative, got %s", q(string(d)))
		return 0, false
	case t <= 0 && !zeroOK:
		v.errs.add(path, "must be positive, got %s", q(string(d)))
		return 0, false
	}
	return t, true
}

// urlPath checks a URL path prefix; it reports whether it is valid.
func (v *validator) urlPath(path, s string) bool {
	switch {
	case !strings.HasPrefix(s, "/"):
		v.errs.add(path, "must start with \"/\", got %s", q(s))
	case len(s) > MaxStringLen:
		v.errs.add(path, "at most %d bytes are allowed, got %d", MaxStringLen, len(s))
	case strings.IndexFunc(s, isSpaceOrControl) >= 0:
		v.errs.add(path, "must not contain spaces or control characters, got %s", q(s))
	default:
		return true
	}
	return false
}

// text checks a free-form single-line string and reports whether it passed.
func (v *validator) text(path, s string, max int) (ok bool) {
	switch {
	case len(s) > max:
		v.errs.add(path, "at most %d bytes are allowed, got %d", max, len(s))
	case strings.IndexFunc(s, isSpaceOrControl) >= 0:
		v.errs.add(path, "must not contain spaces or control characters, got %s", q(s))
	default:
		return true
	}
	return false
}

// tooLong reports (and records) a list longer than max.
func (v *validator) tooLong(path string, n, max int) bool {
	if n <= max {
		return false
	}
	v.errs.add(path, "at most %d entries are allowed, got %d", max, n)
	return true
}

// owner is what an entry of a scoped list sets: a key (empty for lists with
// one key) in a region (empty when unscoped).
type owner struct {
	key, region string
}

// ref locates the entry that first set an owner; scope is -1 when unscoped.
type ref struct {
	entry, scope int
}

// scopes checks the scopes of entry i of list, which sets key, and records
// in owners what it sets, reporting entries of equal specificity that set the
// same key in the same region.
func (v *validator) scopes(list string, i int, scopes []string, key string, owners map[owner]ref) {
	if len(scopes) > MaxListLen {
		v.tooLong(field(at(list, i), "scopes"), len(scopes), MaxListLen)
		return
	}
	if len(scopes) == 0 {
		o := owner{key: key}
		if prev, dup := owners[o]; dup {
			v.errs.add(at(list, i), "ambiguous with %s: both %s with no scope", at(list, prev.entry), sets(key))
			return
		}
		owners[o] = ref{entry: i, scope: -1}
		return
	}
	for j, s := range scopes {
		id, ok := strings.CutPrefix(s, "region:")
		switch {
		case !ok:
			v.errs.add(scopePath(list, i, j), "unknown scope %s: want \"region:<id>\"", q(s))
			continue
		case !v.inRegions(id):
			v.errs.add(scopePath(list, i, j), "region %s is not in regions", q(id))
			continue
		}
		o := owner{key: key, region: id}
		prev, dup := owners[o]
		switch {
		case !dup:
			owners[o] = ref{entry: i, scope: j}
		case prev.entry == i:
			v.errs.add(scopePath(list, i, j), "duplicate scope %s (also scopes[%d])", q(s), prev.scope)
		default:
			v.errs.add(scopePath(list, i, j), "ambiguous with %s: both %s in region %s",
				scopePath(list, prev.entry, prev.scope), sets(key), q(id))
		}
	}
}

// scopePath renders the path of scope j of entry i of list.
func scopePath(list string, i, j int) string {
	return at(field(at(list, i), "scopes"), j)
}

// inRegions reports whether id is one of the definition's regions.
func (v *validator) inRegions(id string) bool {
	_, ok := v.regionIdx[id]
	return ok
}

// sets phrases what an entry sets, for ambiguity messages.
func sets(key string) string {
	if key == "" {
		return "apply"
	}
	return "set " + key
}

// portIndex returns the index of port in ports, or -1.
func portIndex(ports []api.Port, port int) int {
	for i, p := range ports {
		if p.Port == port {
			return i
		}
	}
	return -1
}

func orDuration(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// checkLabel reports s at path unless it is a DNS label; what names it.
func checkLabel(errs *collector, path, s, what string) {
	switch {
	case s == "":
		errs.add(path, "required")
	case !ValidLabel(s):
		errs.add(path, "%s is not a valid %s: want 1 to 63 lowercase letters, digits or '-', starting with a letter and not ending with '-'", q(s), what)
	}
}

// ValidLabel reports whether s is a DNS label as Meridian names use them:
// 1 to 63 characters matching ^[a-z]([-a-z0-9]*[a-z0-9])?$. Service names,
// region ids, data center ids and instance type names follow it.
func ValidLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] < 'a' || s[0] > 'z' || s[len(s)-1] == '-' {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidSecretName reports whether name can name a secret: 1 to 128
// characters matching ^[A-Za-z0-9_][A-Za-z0-9_.-]*$.
func ValidSecretName(name string) bool {
	if len(name) == 0 || len(name) > maxSecretNameLen || name[0] == '.' || name[0] == '-' {
		return false
	}
	for i := range len(name) {
		c := name[i]
		if !(isAlnum(c) || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// isIdentifier reports whether s matches ^[A-Za-z_][A-Za-z0-9_]*$.
func isIdentifier(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := range len(s) {
		if !isAlnum(s[i]) && s[i] != '_' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isSpaceOrControl(r rune) bool {
	return unicode.IsSpace(r) || unicode.IsControl(r)
}

// q quotes a user-supplied string for a message, shortened.
func q(s string) string { return Quote(s) }

// Quote quotes a caller's value for an error message, cut to 40
// characters (with "…" when cut): an error never echoes a large input.
func Quote(s string) string {
	return strconv.Quote(Truncate(s))
}
