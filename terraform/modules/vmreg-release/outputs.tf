output "namespace" {
  description = "The namespace vmreg runs in."
  value       = kubernetes_namespace_v1.this.metadata[0].name
}

output "release" {
  description = "The Helm release name."
  value       = helm_release.this.name
}
