package global

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/image/imagetest"
	"github.com/meridian-run/meridian/store/storetest"
	"github.com/meridian-run/meridian/testutil"
)

// webImage is a small image built in code; body tells versions apart.
func webImage(t testing.TB, body string) v1.Image {
	t.Helper()
	return imagetest.Image(t, v1.Config{Entrypoint: []string{"/bin/web"}, Env: []string{"PATH=/bin"}},
		imagetest.Layer(t, imagetest.File{Name: "bin/"}, imagetest.File{Name: "bin/web", Body: body, Mode: 0o755}))
}

func imageDigest(t testing.TB, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// imageDoc is a definition running image in three regions, with an
// optional registry secret.
func imageDoc(image, secret string) []byte {
	doc := fmt.Sprintf("name: web\nregions: [fra, was, sin]\nimage: %s\nports: [{port: 8080}]\n", image)
	if secret != "" {
		doc += "registry_secret: " + secret + "\n"
	}
	return []byte(doc)
}

// checkPinned checks that d shows image and digest, and that every region
// of it runs digest.
func checkPinned(t *testing.T, what string, d api.Deployment, image, digest string) {
	t.Helper()
	if d.Image != image || d.ImageDigest != digest {
		t.Errorf("%s: deployment shows image %q digest %q, want %q %q", what, d.Image, d.ImageDigest, image, digest)
	}
	if len(d.Regional) != 3 {
		t.Fatalf("%s: %d regional deployments, want 3", what, len(d.Regional))
	}
	for _, rd := range d.Regional {
		if rd.Definition.Image != image || rd.Definition.ImageDigest != digest {
			t.Errorf("%s: region %s runs image %q digest %q, want %q %q", what, rd.Region, rd.Definition.Image, rd.Definition.ImageDigest, image, digest)
		}
	}
}

// TestDeployPinsImageDigest: at deploy the image's tag is resolved at the
// real registry and every region's definition carries the digest; the
// deployment, its list and its service show tag and digest; a tag moved
// later changes new deployments only; a retried deploy replays the digest
// it first got, even with the registry down; a registry down for a new
// deploy is a 422 naming the image, and nothing is stored.
func TestDeployPinsImageDigest(t *testing.T) {
	testutil.Slow(t)
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, 2*time.Minute)
		reg := imagetest.StartRegistry(t)
		img1, img2 := webImage(t, "v1"), webImage(t, "v2")
		d1, d2 := imageDigest(t, img1), imageDigest(t, img2)
		reg.Push(t, "demo/web:1", img1)
		ref := reg.Host + "/demo/web:1"
		h.openRegions("fra", "was", "sin")
		if _, err := h.acme.CreateApp(ctx, "shop", ""); err != nil {
			t.Fatal(err)
		}

		first, err := h.acme.Deploy(ctx, "shop", imageDoc(ref, ""), "application/yaml", "deploy-web-1")
		if err != nil {
			t.Fatal(err)
		}
		checkPinned(t, "deploy answer", first, ref, d1)
		got, err := h.acme.GetDeployment(ctx, first.ID)
		if err != nil {
			t.Fatal(err)
		}
		checkPinned(t, "GET deployment", got, ref, d1)
		svc, err := h.acme.GetService(ctx, "shop", "web")
		if err != nil || svc.Image != ref || svc.ImageDigest != d1 {
			t.Fatalf("GET service: image %q digest %q (%v), want %q %q", svc.Image, svc.ImageDigest, err, ref, d1)
		}

		reg.Push(t, "demo/web:1", webImage(t, "v2")) // the tag moves
		replay, err := h.acme.Deploy(ctx, "shop", imageDoc(ref, ""), "application/yaml", "deploy-web-1")
		if err != nil || replay.ID != first.ID {
			t.Fatalf("retry: %s, %v; want the first deployment %s replayed", replay.ID, err, first.ID)
		}
		checkPinned(t, "replayed retry", replay, ref, d1)
		second, err := h.acme.Deploy(ctx, "shop", imageDoc(ref, ""), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		checkPinned(t, "deploy after the tag moved", second, ref, d2)
		if got, err = h.acme.GetDeployment(ctx, first.ID); err != nil {
			t.Fatal(err)
		}
		checkPinned(t, "first deployment after the tag moved", got, ref, d1)
		byDigest := reg.Host + "/demo/web@" + d1
		third, err := h.acme.Deploy(ctx, "shop", imageDoc(byDigest, ""), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		checkPinned(t, "deploy by digest", third, byDigest, d1)
		list, err := h.acme.ListDeployments(ctx, "shop", "web", api.ListOptions{})
		if err != nil || len(list.Items) != 3 {
			t.Fatalf("list: %d deployments, %v", len(list.Items), err)
		}
		for i, want := range []string{d1, d2, d1} {
			if list.Items[i].ImageDigest != want {
				t.Errorf("list item %d (version %d): digest %q, want %q", i, list.Items[i].Version, list.Items[i].ImageDigest, want)
			}
		}

		reg.Stop()
		replay, err = h.acme.Deploy(ctx, "shop", imageDoc(ref, ""), "application/yaml", "deploy-web-1")
		if err != nil || replay.ID != first.ID {
			t.Fatalf("retry with the registry down: %s, %v; want the first answer replayed", replay.ID, err)
		}
		checkPinned(t, "replay with the registry down", replay, ref, d1)
		_, err = h.acme.Deploy(ctx, "shop", imageDoc(ref, ""), "application/yaml", "deploy-web-2")
		ae := mustStatus(t, err, http.StatusUnprocessableEntity)
		if len(ae.Fields) != 1 || ae.Fields[0].Path != "image" || !strings.Contains(ae.Fields[0].Message, reg.Host) ||
			!strings.Contains(ae.Fields[0].Message, "registry unreachable") {
			t.Errorf("registry down: %+v", ae)
		}
		if list, err = h.acme.ListDeployments(ctx, "shop", "web", api.ListOptions{}); err != nil || len(list.Items) != 3 {
			t.Fatalf("after a deploy with the registry down: %d deployments (%v), want 3", len(list.Items), err)
		}
	})
}

// TestDeployImageFromPrivateRegistry: a registry with basic auth (htpasswd)
// admits deploys whose registry_secret holds its credentials (user:password
// or Docker config JSON); an unknown tag, missing or wrong credentials, a
// secret that does not exist, and a registry secret without an image are
// 400s naming the field, with nothing stored; the credentials appear in no
// API answer, event or log line, and the apply to each region carries them
// under the secret's name.
func TestDeployImageFromPrivateRegistry(t *testing.T) {
	testutil.Slow(t)
	const user, pass = "puller", "Pr1vate-Pa55word"
	logs := &testutil.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, 2*time.Minute)
		reg := imagetest.StartRegistryWith(t, imagetest.RegistryConfig{Users: map[string]string{user: pass}})
		img := webImage(t, "private")
		reg.Push(t, "private/web:1", img)
		ref := reg.Host + "/private/web:1"
		h.openRegions("fra", "was", "sin")
		if _, err := h.acme.CreateApp(ctx, "shop", ""); err != nil {
			t.Fatal(err)
		}
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		for name, value := range map[string]string{
			"pull":     user + ":" + pass,
			"pull-cfg": fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, reg.Host, auth),
			"wrong":    user + ":Wr0ng-Pa55word",
		} {
			if _, err := h.acme.PutSecret(ctx, name, value); err != nil {
				t.Fatal(err)
			}
		}
		answers := []string{}
		deploy := func(doc []byte) (int, string) {
			status, body := raw(t, h, "POST", "/v1/apps/shop/services", h.acme.Token, "application/yaml", doc)
			answers = append(answers, string(body))
			return status, string(body)
		}
		for _, tc := range []struct {
			name   string
			doc    []byte
			field  string
			reason string
		}{
			{"unknown tag", imageDoc(reg.Host+"/private/web:2", "pull"), "image", "image not found at registry " + reg.Host},
			{"unknown repository", imageDoc(reg.Host+"/private/nothing:1", "pull"), "image", "image not found"},
			{"no credentials", imageDoc(ref, ""), "image", "requires credentials"},
			{"wrong credentials", imageDoc(ref, "wrong"), "registry_secret", `refused the credentials of secret "wrong"`},
			{"absent secret", imageDoc(ref, "absent"), "registry_secret", `secret "absent" does not exist`},
			{"secret without image", []byte("name: web\nregions: [fra]\ncommand: [web]\nregistry_secret: pull\n"), "registry_secret", "only allowed with image"},
		} {
			status, body := deploy(tc.doc)
			var e api.Error
			if err := json.Unmarshal([]byte(body), &e); status != http.StatusBadRequest || err != nil {
				t.Errorf("%s: status %d, want 400: %s", tc.name, status, body)
				continue
			}
			if !slices.ContainsFunc(e.Fields, func(f api.FieldError) bool {
				return f.Path == tc.field && strings.Contains(f.Message, tc.reason)
			}) {
				t.Errorf("%s: want field %s saying %q: %s", tc.name, tc.field, tc.reason, body)
			}
		}
		if services, err := h.acme.ListServices(ctx, "shop", api.ListOptions{}); err != nil || len(services.Items) != 0 {
			t.Fatalf("after bad deploys: %d services (%v), want none", len(services.Items), err)
		}

		var ids []string
		for _, secret := range []string{"pull", "pull-cfg"} {
			status, body := deploy(imageDoc(ref, secret))
			var d api.Deployment
			if err := json.Unmarshal([]byte(body), &d); status != http.StatusCreated || err != nil {
				t.Fatalf("deploy with secret %s: %d %s", secret, status, body)
			}
			checkPinned(t, "private image with "+secret, d, ref, imageDigest(t, img))
			for _, rd := range d.Regional {
				if rd.Definition.RegistrySecret != secret {
					t.Errorf("region %s: registry_secret %q, want %q", rd.Region, rd.Definition.RegistrySecret, secret)
				}
			}
			ids = append(ids, d.ID)
		}
		for _, id := range ids {
			_, body := raw(t, h, "GET", "/v1/deployments/"+id, h.acme.Token, "", nil)
			answers = append(answers, string(body))
		}
		for _, path := range []string{"/v1/apps/shop/services/web", "/v1/apps/shop/services/web/deployments", "/v1/secrets"} {
			_, body := raw(t, h, "GET", path, h.acme.Token, "", nil)
			answers = append(answers, string(body))
		}

		// The apply to each region carries the registry secret's value
		// under its name (the region pulls with it).
		d, err := h.acme.GetDeployment(ctx, ids[1])
		if err != nil {
			t.Fatal(err)
		}
		secrets, err := h.srv.secretsFor(ctx, d.OrgID, d.Regional[0].Definition)
		if err != nil || len(secrets) != 1 || !strings.Contains(secrets["pull-cfg"], auth) {
			t.Fatalf("the apply's secrets: %d entries (%v), want pull-cfg's value", len(secrets), err)
		}

		for _, leak := range []string{pass, auth, "Wr0ng-Pa55word"} {
			for _, a := range answers {
				if strings.Contains(a, leak) {
					t.Errorf("an API answer shows credentials: %s", a)
				}
			}
			if strings.Contains(logs.String(), leak) {
				t.Errorf("the logs show credentials:\n%s", logs)
			}
		}
		if !strings.Contains(logs.String(), "image resolved") || !strings.Contains(logs.String(), "refused the credentials") {
			t.Errorf("the logs do not tell the resolutions:\n%s", logs)
		}
	}, func(c *Config) { c.Logger = logger })
}

// TestInsecureRegistries: a registry that is not on loopback by name is
// reached over plain HTTP only when the operator names it insecure; it is
// the real registry on loopback behind a name the test's transport dials.
func TestInsecureRegistries(t *testing.T) {
	testutil.Slow(t)
	reg := imagetest.StartRegistry(t)
	img := webImage(t, "lan")
	reg.Push(t, "demo/web:1", img)
	_, port, _ := net.SplitHostPort(reg.Host)
	lan := "registry.lan:" + port
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr != lan {
			return nil, fmt.Errorf("the test dials only %s, not %s", lan, addr)
		}
		return dialer.DialContext(ctx, network, reg.Host)
	}}
	for _, insecure := range []bool{false, true} {
		t.Run(fmt.Sprintf("insecure=%v", insecure), func(t *testing.T) {
			h := newHarness(t, storetest.Open(t, "sqlite"), func(c *Config) {
				c.Images.Transport = transport
				if insecure {
					c.Images.Insecure = []string{lan}
				}
			})
			ctx := testutil.Context(t, time.Minute)
			h.openRegions("fra", "was", "sin")
			if _, err := h.acme.CreateApp(ctx, "shop", ""); err != nil {
				t.Fatal(err)
			}
			d, err := h.acme.Deploy(ctx, "shop", imageDoc(lan+"/demo/web:1", ""), "application/yaml", "")
			if insecure {
				if err != nil {
					t.Fatal(err)
				}
				checkPinned(t, "named insecure", d, lan+"/demo/web:1", imageDigest(t, img))
				return
			}
			ae := mustStatus(t, err, http.StatusBadRequest)
			if len(ae.Fields) != 1 || ae.Fields[0].Path != "image" || !strings.Contains(ae.Fields[0].Message, "registry "+lan+" answers plain HTTP, not TLS") {
				t.Errorf("plain HTTP to %s: %+v", lan, ae)
			}
		})
	}
}
