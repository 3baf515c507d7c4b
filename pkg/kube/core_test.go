package kube

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// TestCoreClientPaths: the core/v1 client reads and writes where the API
// server serves those objects, decodes what it answers, and turns a 404
// into NotFound.
func TestCoreClientPaths(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		var out any
		switch r.Method + " " + r.URL.Path {
		case "GET /api/v1/nodes/n1":
			out = corev1.Node{TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "node-uid"}}
		case "GET /api/v1/persistentvolumes/pv1":
			out = corev1.PersistentVolume{TypeMeta: metav1.TypeMeta{Kind: "PersistentVolume", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: "pv1", UID: "pv-uid"}}
		case "POST /api/v1/namespaces/default/events":
			var e corev1.Event
			if err := json.Unmarshal(body, &e); err != nil || e.Reason != "DiskCleanupFailed" || e.InvolvedObject.UID != "node-uid" {
				t.Errorf("event posted: %v %s", err, body)
			}
			e.Name = "created"
			out = e
		default:
			w.WriteHeader(http.StatusNotFound)
			out = metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure, Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound}
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	defer srv.Close()
	c, err := NewCoreClient(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if n, err := c.Node(ctx, "n1"); err != nil || n.UID != "node-uid" {
		t.Errorf("Node(n1) = %v, %v", n, err)
	}
	if pv, err := c.PersistentVolume(ctx, "pv1"); err != nil || pv.UID != "pv-uid" {
		t.Errorf("PersistentVolume(pv1) = %v, %v", pv, err)
	}
	if pvc, err := c.PersistentVolumeClaim(ctx, "ns", "c"); !apierrors.IsNotFound(err) || pvc != nil {
		t.Errorf("PersistentVolumeClaim(ns, c) of none = %v, %v; want nil and NotFound", pvc, err)
	}
	e := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "n1.1", Namespace: "default"}, Reason: "DiskCleanupFailed",
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "n1", UID: "node-uid"}}
	if got, err := c.EventSink().Create(e); err != nil || got.Name != "created" {
		t.Errorf("Create(event) = %v, %v", got, err)
	}
	want := []string{"GET /api/v1/nodes/n1", "GET /api/v1/persistentvolumes/pv1",
		"GET /api/v1/namespaces/ns/persistentvolumeclaims/c", "POST /api/v1/namespaces/default/events"}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != len(want) {
		t.Fatalf("requests %q; want %q", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Errorf("request %d: %s; want %s", i, seen[i], want[i])
		}
	}
}
