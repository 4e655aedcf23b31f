"""A single-node Kubernetes for tests/test_kubernetes.py: built from Debian's source (build),
brought up in a network namespace of its own (netns, node), given the images the release
names (images), and our release installed on it as `skaffold dev` installs it (release)."""
