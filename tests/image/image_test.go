// Package image builds the driver's container image from the repository's
// own Dockerfile with buildah, on local stand-ins for its pinned base
// images (standin_test.go says what they are and what that leaves
// unproved), and checks what the built image holds: the entrypoint's
// version and commit, and every tool the driver runs. It needs root,
// buildah and debootstrap, the Debian mirror and the Go module proxy, and
// takes minutes: it is its own module, so the root module's go test ./...
// does not run it (make image-check does).
package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const repo = "../.."

var (
	versionFlag = flag.String("version", "", "VERSION build argument (default: the repository's VERSION file)")
	commitFlag  = flag.String("commit", "", "COMMIT build argument (default: git's short commit, -dirty with uncommitted changes)")
	ociFlag     = flag.String("oci", "", "where to write the image as an OCI archive (default: ecs-localdisk-csi-image.oci.tar in the cache directory)")
)

// env is what the image tests share: a private buildah store holding the
// stand-in base images, and the build arguments.
type env struct {
	store           store
	context         string // the build context: a snapshot of the repository
	goVersion       string
	version, commit string
}

var (
	setupOnce sync.Once
	shared    *env
	setupErr  error
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if shared != nil {
		if err := shared.store.remove(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// setup makes the shared env on first use: the tests that need no image
// (TestRewriteFrom) run without root or buildah.
func setup(t *testing.T) *env {
	t.Helper()
	setupOnce.Do(func() { shared, setupErr = newEnv(t.Logf) })
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	return shared
}

func newEnv(logf func(string, ...any)) (*env, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("needs root (buildah builds as root here; debootstrap needs it)")
	}
	for _, tools := range [][]string{{"buildah"}, {"debootstrap"}, {"runc", "crun"}, {"tar"}, {"go"}, {"git"}} {
		found := false
		for _, tool := range tools {
			_, err := exec.LookPath(tool)
			found = found || err == nil
		}
		if !found {
			return nil, fmt.Errorf("%s is not installed (apt-get install --no-install-recommends buildah debootstrap runc)", strings.Join(tools, " or "))
		}
	}
	goroot, goVersion, goEnv, err := hostGoEnv()
	if err != nil {
		return nil, err
	}
	version, commit, err := buildArgs()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	rootfs, err := bookwormRootfs(logf)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ecs-localdisk-csi-image-")
	if err != nil {
		return nil, err
	}
	e := &env{store: store{dir: dir}, goVersion: goVersion, version: version, commit: commit}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return e, err
	}
	e.context = filepath.Join(dir, "context")
	if err := snapshot(repo, e.context); err != nil {
		return e, err
	}
	if err := commitStandIns(e.store, rootfs, goroot, goEnv); err != nil {
		return e, err
	}
	logf("stand-in base images ready after %s: %s, %s (%s from %s, %v)", time.Since(start).Round(time.Second),
		standInDebian, standInGolang, goVersion, goroot, goEnv)
	return e, nil
}

// snapshot copies the repository's working tree to dir, less .git and
// the top-level names .dockerignore lists (buildah applies the rest of
// it): every build of a run sees the same sources, and so shares the
// cached steps, while the tree goes on changing.
func snapshot(repo, dir string) error {
	args := []string{"-C", repo, "--exclude=./.git"}
	if b, err := os.ReadFile(filepath.Join(repo, ".dockerignore")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			name := strings.Trim(strings.TrimSpace(line), "/")
			if name != "" && !strings.HasPrefix(name, "#") && !strings.ContainsAny(name, "*?[!/") {
				args = append(args, "--exclude=./"+name)
			}
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	c := exec.Command("sh", append([]string{"-c", `tar "$@" -cf - . | tar -C "$0" -xf -`, dir}, args...)...)
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("copying %s to %s: %v\n%s", repo, dir, err, out)
	}
	return nil
}

// buildArgs are VERSION and COMMIT as make image passes them.
func buildArgs() (version, commit string, err error) {
	version, commit = *versionFlag, *commitFlag
	if version == "" {
		b, err := os.ReadFile(filepath.Join(repo, "VERSION"))
		if err != nil {
			return "", "", err
		}
		version = strings.TrimSpace(string(b))
	}
	if commit == "" {
		out, err := exec.Command("git", "-C", repo, "rev-parse", "--short=12", "HEAD").Output()
		if err != nil {
			return "", "", fmt.Errorf("git rev-parse: %v", err)
		}
		commit = strings.TrimSpace(string(out))
		if exec.Command("git", "-C", repo, "diff", "--quiet", "HEAD", "--").Run() != nil {
			commit += "-dirty"
		}
	}
	return version, commit, nil
}

// build builds dockerfile (the repository's Dockerfile or a changed copy)
// with the snapshot of the repository as context and its FROM lines
// rewritten to the stand-ins, and returns the image name and buildah's
// output. Layers are cached in the store, so builds after the first
// reuse the steps they share with it.
func (e *env) build(t *testing.T, name string, dockerfile []byte) (image, log string, err error) {
	t.Helper()
	rewritten, replaced, err := rewriteFrom(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(e.store.dir, "Dockerfile."+name)
	if err := os.WriteFile(path, rewritten, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, base := range replaced {
		if _, tag := normalize(base); strings.HasSuffix(tag, "-alpine") && "go"+strings.TrimSuffix(tag, "-alpine") != e.goVersion {
			t.Logf("the Dockerfile builds with Go %s; the stand-in has the host's %s", strings.TrimSuffix(tag, "-alpine"), e.goVersion)
		}
	}
	image = "localhost/ecs-localdisk-csi-check:" + name
	args := []string{"bud", "--layers", "--pull=never", "--network=host", "-f", path,
		"--build-arg", "VERSION=" + e.version, "--build-arg", "COMMIT=" + e.commit}
	// Build arguments every builder predefines: a proxy the host needs,
	// the build's RUN steps need too.
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"} {
		if v, ok := os.LookupEnv(k); ok {
			args = append(args, "--build-arg", k+"="+v)
		}
	}
	args = append(args, "-t", image, e.context)
	start := time.Now()
	cmd := e.store.cmd(args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("buildah bud (%s) took %s", name, time.Since(start).Round(time.Second))
	return image, out.String(), err
}

// container starts a working container of image (no network) for the
// checks, removed when the test ends.
func (e *env) container(t *testing.T, image string) string {
	t.Helper()
	ctr, err := e.store.run("from", "--pull=never", image)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := e.store.run("rm", ctr); err != nil {
			t.Error(err)
		}
	})
	return ctr
}

// runIn runs argv in the container ctr, as the image's config has it
// (environment, working directory), without network.
func (e *env) runIn(ctr string, argv ...string) (string, error) {
	out, err := e.store.cmd(append([]string{"run", "--network=none", ctr, "--"}, argv...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// versionArgs makes each tool print its version and exit 0: running it so
// shows it is there and its libraries load. A tool added to Tools needs
// an entry here.
var versionArgs = map[string][]string{
	"blkid": {"-V"}, "wipefs": {"-V"}, "blkdiscard": {"-V"}, "blockdev": {"-V"},
	"mkfs.ext4": {"-V"}, "mkfs.xfs": {"-V"},
	"mount": {"-V"}, "umount": {"-V"},
}

// toolProblems runs every tool of pkg/mounter's Tools inside image, found
// the way the driver finds it (on the image's PATH), and returns what is
// wrong per tool: not on PATH, not executable, or failing to run.
func (e *env) toolProblems(t *testing.T, image string) map[string]string {
	t.Helper()
	tools := mounterTools(t)
	ctr := e.container(t, image)
	problems := map[string]string{}
	for _, tool := range tools {
		args, ok := versionArgs[tool]
		if !ok {
			t.Fatalf("pkg/mounter Tools has %s, which versionArgs does not know how to run", tool)
		}
		// The image's own shell resolves the name on the image's PATH.
		script := `p=$(command -v "$0") || { echo "not on PATH $PATH"; exit 127; }
[ -x "$p" ] || { echo "$p is not executable"; exit 126; }
echo "$p"; exec "$p" "$@"`
		out, err := e.runIn(ctr, append([]string{"/bin/sh", "-c", script, tool}, args...)...)
		if err != nil {
			problems[tool] = fmt.Sprintf("%v: %s", err, out)
			continue
		}
		path, version, _ := strings.Cut(out, "\n")
		version, _, _ = strings.Cut(version, "\n")
		t.Logf("%-10s %-22s %s", tool, path, version)
	}
	return problems
}

// mounterTools is pkg/mounter's Tools, read from its source (this module
// does not import the driver's).
func mounterTools(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(repo, "pkg/mounter/tools.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var tools []string
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "Tools" || len(vs.Values) != 1 {
			return true
		}
		lit, ok := vs.Values[0].(*ast.CompositeLit)
		if !ok {
			return true
		}
		for _, el := range lit.Elts {
			if bl, ok := el.(*ast.BasicLit); ok && bl.Kind == token.STRING {
				s, _ := strconv.Unquote(bl.Value)
				tools = append(tools, s)
			}
		}
		return false
	})
	if len(tools) == 0 {
		t.Fatal("no Tools list in pkg/mounter/tools.go")
	}
	return tools
}

func readDockerfile(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestImage builds the image from the repository's Dockerfile and checks
// it: the entrypoint prints the stamped version and commit, every tool
// the driver runs is on the image's PATH and runs, and the image exports
// as an OCI archive whose blobs match their digests.
func TestImage(t *testing.T) {
	e := setup(t)
	image, log, err := e.build(t, "ok", readDockerfile(t))
	if err != nil {
		t.Fatalf("building the image from the Dockerfile: %v\n%s", err, tail(log, 40))
	}

	t.Run("version", func(t *testing.T) {
		out, err := e.store.run("inspect", "--type", "image", image)
		if err != nil {
			t.Fatal(err)
		}
		var inspect struct {
			OCIv1 struct{ Config struct{ Entrypoint []string } }
		}
		if err := json.Unmarshal([]byte(out), &inspect); err != nil {
			t.Fatalf("buildah inspect: %v", err)
		}
		entrypoint := inspect.OCIv1.Config.Entrypoint
		if len(entrypoint) == 0 {
			t.Fatal("the image has no entrypoint")
		}
		got, err := e.runIn(e.container(t, image), append(entrypoint, "--version")...)
		if err != nil {
			t.Fatalf("%v --version: %v\n%s", entrypoint, err, got)
		}
		want := fmt.Sprintf("ecs-localdisk-csi %s (commit %s, %s)", e.version, e.commit, e.goVersion)
		if got != want {
			t.Errorf("%v --version = %q, want %q", entrypoint, got, want)
		}
		t.Logf("%v --version: %s", entrypoint, got)
		// The Deployment runs the cluster component as "<entrypoint>
		// controller": the entrypoint runs the controller binary beside it.
		got, err = e.runIn(e.container(t, image), append(entrypoint, "controller", "--help")...)
		if err != nil || !strings.Contains(got, "Usage: ecs-localdisk-csi controller") || !strings.Contains(got, "Controller flags:") {
			t.Errorf("%v controller --help: %v\n%s", entrypoint, err, got)
		}
	})

	t.Run("tools", func(t *testing.T) {
		for tool, problem := range e.toolProblems(t, image) {
			t.Errorf("%s: %s", tool, problem)
		}
	})

	t.Run("oci-archive", func(t *testing.T) {
		path := *ociFlag
		if path == "" {
			dir, err := cacheDir()
			if err != nil {
				t.Fatal(err)
			}
			path = filepath.Join(dir, "ecs-localdisk-csi-image.oci.tar")
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		ref := "docker.io/library/ecs-localdisk-csi:" + e.version
		if _, err := e.store.run("push", "--quiet", image, "oci-archive:"+path+":"+ref); err != nil {
			t.Fatal(err)
		}
		summary, err := checkOCIArchive(path, ref)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d MB, %s", path, st.Size()>>20, summary)
	})
}

// TestBuildFailsWithoutACopiedSource: a build stage that does not copy
// internal/ fails the build, at go build, naming the missing package.
func TestBuildFailsWithoutACopiedSource(t *testing.T) {
	e := setup(t)
	df := readDockerfile(t)
	changed := dropLine(t, df, "COPY internal internal")
	_, log, err := e.build(t, "no-internal", changed)
	if err == nil {
		t.Fatal("the build without COPY internal internal succeeded")
	}
	last := tail(log, 15)
	if !strings.Contains(last, "/internal/") || !strings.Contains(last, "go build") {
		t.Fatalf("the build failed, but not at go build over a missing internal/ package:\n%s", last)
	}
	t.Logf("fails as it should:\n%s", last)
}

// TestToolCheckFailsWithoutXfsprogs: a runtime stage that does not
// install xfsprogs builds, and the tool check then finds mkfs.xfs, and
// only it, missing.
func TestToolCheckFailsWithoutXfsprogs(t *testing.T) {
	e := setup(t)
	df := readDockerfile(t)
	changed := bytes.Replace(df, []byte(" xfsprogs "), []byte(" "), 1)
	if bytes.Equal(changed, df) {
		t.Fatal("the Dockerfile installs no xfsprogs package (\" xfsprogs \"); update this test")
	}
	image, log, err := e.build(t, "no-xfsprogs", changed)
	if err != nil {
		t.Fatalf("building without xfsprogs: %v\n%s", err, tail(log, 40))
	}
	problems := e.toolProblems(t, image)
	var missing []string
	for tool, problem := range problems {
		missing = append(missing, tool)
		t.Logf("found as it should: %s: %s", tool, problem)
	}
	slices.Sort(missing)
	if !slices.Equal(missing, []string{"mkfs.xfs"}) {
		t.Errorf("tools found wrong without xfsprogs: %v, want [mkfs.xfs]", missing)
	}
}

// dropLine returns df without the line that reads line (spaces trimmed),
// failing when there is none.
func dropLine(t *testing.T, df []byte, line string) []byte {
	t.Helper()
	var out []string
	found := false
	for _, l := range strings.Split(string(df), "\n") {
		if strings.TrimSpace(l) == line {
			found = true
			continue
		}
		out = append(out, l)
	}
	if !found {
		t.Fatalf("the Dockerfile has no line %q; update this test", line)
	}
	return []byte(strings.Join(out, "\n"))
}

// TestRewriteFrom: the FROM lines become the stand-ins, a stage named by
// an earlier one stays, and a base with no stand-in is refused.
func TestRewriteFrom(t *testing.T) {
	got, replaced, err := rewriteFrom(readDockerfile(t))
	if err != nil {
		t.Fatalf("the repository's Dockerfile: %v", err)
	}
	if len(replaced) != 2 || !bytes.Contains(got, []byte("FROM "+standInGolang+" AS build\n")) || !bytes.Contains(got, []byte("FROM "+standInDebian+"\n")) {
		t.Errorf("rewritten Dockerfile (replaced %v):\n%s", replaced, got)
	}
	ok := "FROM golang:1.26-alpine AS build\nRUN true\nFROM build AS test\nfrom --platform=linux/amd64 debian:bookworm-slim@sha256:00\n"
	got, _, err = rewriteFrom([]byte(ok))
	want := "FROM " + standInGolang + " AS build\nRUN true\nFROM build AS test\nfrom --platform=linux/amd64 " + standInDebian + "\n"
	if err != nil || string(got) != want {
		t.Errorf("rewriteFrom(%q) = %q, %v; want %q", ok, got, err, want)
	}
	for _, bad := range []string{
		"FROM golang:1.26 AS build\n",                     // Debian-based golang: not the base the stand-in replaces
		"FROM debian:trixie-slim\n",                       // another Debian release
		"FROM golang:1.26-alpine AS build\nFROM alpine\n", // a new stage on another base
		"FROM scratch\n",
		"RUN true\n",
	} {
		if _, _, err := rewriteFrom([]byte(bad)); err == nil {
			t.Errorf("rewriteFrom(%q) succeeded; want an error", bad)
		}
	}
}

// checkOCIArchive reads the OCI image layout archive at path: one image
// named ref, whose manifest, config and layers are all there with the
// digests and sizes that name them. It returns a one-line summary.
func checkOCIArchive(path, ref string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	type blob struct {
		size int64
		ok   bool
	}
	blobs := map[string]blob{}
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
		name := strings.TrimPrefix(h.Name, "./")
		switch {
		case name == "oci-layout" || name == "index.json":
			if files[name], err = io.ReadAll(tr); err != nil {
				return "", err
			}
		case strings.HasPrefix(name, "blobs/sha256/"):
			hash := sha256.New()
			var w io.Writer = hash
			var keep bytes.Buffer
			if h.Size < 1<<20 { // manifests and configs, read again below; layers are not
				w = io.MultiWriter(hash, &keep)
			}
			n, err := io.Copy(w, tr)
			if err != nil {
				return "", err
			}
			d := "sha256:" + strings.TrimPrefix(name, "blobs/sha256/")
			blobs[d] = blob{size: n, ok: "sha256:"+hex.EncodeToString(hash.Sum(nil)) == d}
			files[d] = keep.Bytes()
		}
	}
	if !bytes.Contains(files["oci-layout"], []byte(`"imageLayoutVersion"`)) {
		return "", fmt.Errorf("%s: no oci-layout file", path)
	}
	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations"`
	}
	var index struct{ Manifests []descriptor }
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		return "", fmt.Errorf("%s: index.json: %v", path, err)
	}
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != ref {
		return "", fmt.Errorf("%s: index.json holds %+v; want one manifest named %s", path, index.Manifests, ref)
	}
	check := func(d descriptor) error {
		b, ok := blobs[d.Digest]
		switch {
		case !ok:
			return fmt.Errorf("%s: blob %s (%s) missing", path, d.Digest, d.MediaType)
		case !b.ok:
			return fmt.Errorf("%s: blob %s does not hash to its name", path, d.Digest)
		case b.size != d.Size:
			return fmt.Errorf("%s: blob %s is %d bytes, its descriptor says %d", path, d.Digest, b.size, d.Size)
		}
		return nil
	}
	if err := check(index.Manifests[0]); err != nil {
		return "", err
	}
	var manifest struct {
		Config descriptor
		Layers []descriptor
	}
	if err := json.Unmarshal(files[index.Manifests[0].Digest], &manifest); err != nil {
		return "", fmt.Errorf("%s: manifest: %v", path, err)
	}
	if len(manifest.Layers) == 0 {
		return "", fmt.Errorf("%s: the manifest has no layers", path)
	}
	var total int64
	for _, d := range append([]descriptor{manifest.Config}, manifest.Layers...) {
		if err := check(d); err != nil {
			return "", err
		}
		total += d.Size
	}
	return fmt.Sprintf("%s, %d layers, %d MB of blobs, digests checked", index.Manifests[0].Digest, len(manifest.Layers), total>>20), nil
}
