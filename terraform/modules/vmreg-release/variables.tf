variable "namespace" {
  description = "Namespace to create and install vmreg in; must be the one the IRSA role trusts."
  type        = string
  default     = "vmreg"
}

variable "release_name" {
  description = "Helm release name."
  type        = string
  default     = "vmreg"
}

variable "service_account_name" {
  description = "Service account the chart creates; must be the one the IRSA role trusts."
  type        = string
  default     = "vmreg"
}

variable "irsa_role_arn" {
  description = "IAM role the service account assumes (modules/vmreg's irsa_role_arn); null for none."
  type        = string
  default     = null
}

variable "chart_path" {
  description = "Path of the vmreg chart."
  type        = string
}

variable "image_repository" {
  description = "Where the vmreg image (deploy/Dockerfile) was pushed."
  type        = string
}

variable "image_tag" {
  description = "Image tag; the chart's appVersion when empty."
  type        = string
  default     = ""
}

variable "bucket" {
  description = "S3 bucket (modules/vmreg's bucket)."
  type        = string
}

variable "region" {
  description = "The bucket's region."
  type        = string
}

variable "redis_url" {
  description = "Redis URL with its AUTH token (modules/vmreg's redis_url); stored in a Kubernetes Secret."
  type        = string
  sensitive   = true
}

variable "values" {
  description = "More chart values (YAML documents), applied after this module's."
  type        = list(string)
  default     = []
}
