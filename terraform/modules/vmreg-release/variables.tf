variable "namespace" {
  description = "Namespace to create and install vmreg in; must be the one the IRSA role trusts."
  type        = string
  default     = "vmreg"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace: a Kubernetes namespace name (lower-case letters, digits, hyphens; at most 63)."
  }
}

variable "release_name" {
  description = "Helm release name."
  type        = string
  default     = "vmreg"
  validation {
    # Helm's rule for release names, and room for the "-redis" Secret suffix.
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,45}[a-z0-9])?$", var.release_name))
    error_message = "release_name: lower-case letters, digits and hyphens, at most 47 characters."
  }
}

variable "service_account_name" {
  description = "Service account the chart creates; must be the one the IRSA role trusts."
  type        = string
  default     = "vmreg"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.service_account_name))
    error_message = "service_account_name: a Kubernetes service account name."
  }
}

variable "irsa_role_arn" {
  description = "IAM role the service account assumes (modules/vmreg's irsa_role_arn); null for none."
  type        = string
  default     = null
  validation {
    condition     = var.irsa_role_arn == null || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", var.irsa_role_arn))
    error_message = "irsa_role_arn: an IAM role ARN, or null."
  }
}

variable "chart_path" {
  description = "Path of the vmreg chart."
  type        = string
}

variable "image_repository" {
  description = "Where the vmreg image (deploy/Dockerfile) was pushed."
  type        = string
  validation {
    condition     = length(var.image_repository) > 0 && !can(regex("[:@]", replace(var.image_repository, "/^[^/]+:[0-9]+//", "")))
    error_message = "image_repository: a repository without tag or digest (set image_tag)."
  }
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
  validation {
    condition     = can(regex("^rediss?://", var.redis_url))
    error_message = "redis_url: a redis:// or rediss:// URL."
  }
}

variable "values" {
  description = "More chart values (YAML documents), applied after this module's."
  type        = list(string)
  default     = []
}
