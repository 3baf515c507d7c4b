package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// controllerDeployment is the name of the shipped cluster component.
const controllerDeployment = "ecs-localdisk-csi-controller"

// ecsURLs are the endpoints of the cluster's fake ECS.
type ecsURLs struct{ Metadata, API, Control string }

// clusterECS starts the cluster's one fake ECS (the fakeecs command) the
// first time a node or the controller needs it: one OpenAPI endpoint that
// knows every node's instance, and a metadata server per instance.
func (cp *ControlPlane) clusterECS(ctx context.Context) (*ecsURLs, error) {
	if cp.ecs != nil {
		return cp.ecs, nil
	}
	if cp.cfg.FakeECS == "" {
		return nil, fmt.Errorf("a node or the controller needs the fake ECS, but Config.FakeECS is not set")
	}
	urlsPath := filepath.Join(cp.cfg.Dir, "ecs-urls.json")
	p, err := cp.procs.start(cp.cfg.Dir, "fakeecs", cp.cfg.FakeECS, "--urls="+urlsPath)
	if err != nil {
		return nil, err
	}
	var urls ecsURLs
	err = waitFor(ctx, p, "fake ECS", func() error {
		b, err := os.ReadFile(urlsPath)
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &urls)
	})
	if err != nil {
		return nil, err
	}
	cp.ecs = &urls
	return cp.ecs, nil
}

// ecsControl posts to the fake ECS's control endpoint.
func (cp *ControlPlane) ecsControl(ctx context.Context, path string, body any) ([]byte, error) {
	return cp.ecsCall(ctx, http.MethodPost, path, body)
}

// ecsCall calls the fake ECS's control endpoint.
func (cp *ControlPlane) ecsCall(ctx context.Context, method, path string, body any) ([]byte, error) {
	urls, err := cp.clusterECS(ctx)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, method, urls.Control+path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fake ECS %s: %s: %s", path, resp.Status, out)
	}
	return out, nil
}

// addInstance makes the fake ECS know an instance with its disks, and
// returns the URL of its metadata server.
func (cp *ControlPlane) addInstance(ctx context.Context, spec any) (string, error) {
	out, err := cp.ecsControl(ctx, "/instances", spec)
	if err != nil {
		return "", err
	}
	var r struct{ Metadata string }
	if err := json.Unmarshal(out, &r); err != nil {
		return "", err
	}
	return r.Metadata, nil
}

// InstanceID is the ECS instance of a node whose disks come from the fake
// ECS.
func (n *Node) InstanceID() string { return "i-" + n.Name }

// ReleaseInstance releases a kubelet-less node's instance, as a scale-in
// does: the node's driver and csi-provisioner stop (killed: the machine is
// gone), and the fake ECS no longer lists the instance or its disks.
func (cp *ControlPlane) ReleaseInstance(ctx context.Context, n *Node) error {
	if n.real != nil {
		return fmt.Errorf("%s is a real node", n.Name)
	}
	for _, p := range n.procs {
		p.kill()
	}
	_, err := cp.ecsControl(ctx, "/release?instance="+n.InstanceID(), nil)
	return err
}

// ControllerConfig is how a test runs the cluster component.
type ControllerConfig struct {
	// GracePeriod is --node-loss-grace-period.
	GracePeriod time.Duration
	// AcceptDiskEvents turns --accept-disk-events on, as the chart's
	// controller.acceptDiskEvents does.
	AcceptDiskEvents bool
}

// StartController runs the controller container of the shipped Deployment
// (the ecs overlay's, against the cluster's fake ECS) as a host process, with
// the Deployment's ServiceAccount; every change the harness makes is here,
// with its reason. Deploy must have run.
func (cp *ControlPlane) StartController(ctx context.Context, cc ControllerConfig) error {
	d := cp.deployed.controller
	var c *corev1.Container
	for i := range d.Spec.Template.Spec.Containers {
		if d.Spec.Template.Spec.Containers[i].Name == "controller" {
			c = &d.Spec.Template.Spec.Containers[i]
		}
	}
	if c == nil {
		return fmt.Errorf("Deployment %s has no container controller", d.Name)
	}
	vars, env, err := podEnv(c, map[string]string{"metadata.namespace": d.Namespace, "metadata.name": d.Name + "-e2e"}, nil, fakeECSSecrets(c))
	if err != nil {
		return err
	}
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = expandArg(a, vars)
	}
	dir := filepath.Join(cp.cfg.Dir, "controller")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// Harness: a host process has no in-cluster configuration; its
	// kubeconfig carries a TokenRequest token of the Deployment's
	// ServiceAccount, and so only the rights the shipped RBAC gives.
	token, err := cp.Kubectl(ctx, "", "create", "token", d.Spec.Template.Spec.ServiceAccountName, "-n", d.Namespace, "--duration=1h")
	if err != nil {
		return err
	}
	kubeconfig, err := cp.kubeconfig(filepath.Join(dir, "serviceaccount.kubeconfig"), d.Spec.Template.Spec.ServiceAccountName, "token: "+strings.TrimSpace(token))
	if err != nil {
		return err
	}
	args = setFlag(args, "kubeconfig", kubeconfig)
	// Harness: the machine's network is shared; the health endpoint takes
	// a free loopback port.
	args = setFlag(args, "http-endpoint", "127.0.0.1:0")
	// Harness: the tests wait out the grace period (2 minutes as shipped)
	// and the checks between changes (10 s).
	if cc.GracePeriod > 0 {
		args = setFlag(args, "node-loss-grace-period", cc.GracePeriod.String())
	}
	args = setFlag(args, "resync-interval", "2s")
	// Harness: ECS's damaged-disk events are read every few seconds (once
	// a minute as shipped): the tests wait for them.
	args = setFlag(args, "cloud-event-interval", "2s")
	if cc.AcceptDiskEvents {
		// The test's choice, as controller.acceptDiskEvents in the chart.
		args = append(args, "--accept-disk-events")
	}
	// Harness: the instance metadata server and the ECS OpenAPI are the
	// cluster's fake ECS, where the controller's own instance is one more.
	urls, err := cp.clusterECS(ctx)
	if err != nil {
		return err
	}
	md, err := cp.addInstance(ctx, map[string]any{"Instance": map[string]string{"ID": "i-e2e-controller", "Type": "ecs.e2e", "Region": "cn-hangzhou", "Zone": "cn-hangzhou-k"}})
	if err != nil {
		return err
	}
	args = setFlag(args, "metadata-endpoint", md)
	args = setFlag(args, "ecs-endpoint", urls.API)
	p, err := cp.procs.startEnv(dir, "controller", cp.cfg.Driver, env, args...)
	if err != nil {
		return err
	}
	cp.controllerLog = p.log
	return waitFor(ctx, p, "controller", func() error {
		b, err := os.ReadFile(p.log)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "Recovery controller started") {
			return fmt.Errorf("not started")
		}
		return nil
	})
}

// ControllerLog is the log of the controller, "" before StartController.
func (cp *ControlPlane) ControllerLog() string { return cp.controllerLog }

// deploymentOf is the overlay's Deployment called name.
func (r *Rendered) deploymentOf(name string) (*appsv1.Deployment, error) {
	for _, obj := range r.Objects {
		if kind, n := kindName(obj); kind == "Deployment" && n == name {
			d := &appsv1.Deployment{}
			return d, convert(obj, d)
		}
	}
	return nil, fmt.Errorf("no Deployment %s rendered", name)
}

// scaleToZero sets the replicas of the rendered Deployment called name to 0.
func (r *Rendered) scaleToZero(name string) error {
	for _, obj := range r.Objects {
		if kind, n := kindName(obj); kind == "Deployment" && n == name {
			spec, ok := obj["spec"].(map[string]any)
			if !ok {
				return fmt.Errorf("Deployment %s has no spec", name)
			}
			spec["replicas"] = 0
			return nil
		}
	}
	return fmt.Errorf("no Deployment %s rendered", name)
}
