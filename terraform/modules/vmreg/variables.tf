variable "name" {
  description = "Name prefix of every resource."
  type        = string
  default     = "vmreg"
  validation {
    # It starts the bucket name (lower case, digits, hyphens) and the ElastiCache group id
    # (at most 40 characters with its "-redis" suffix).
    condition     = can(regex("^[a-z][a-z0-9-]{0,32}[a-z0-9]$", var.name))
    error_message = "name: 2 to 34 lower-case letters, digits and hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "bucket_name" {
  description = "S3 bucket name; a name derived from var.name is used when empty."
  type        = string
  default     = ""
  validation {
    condition     = var.bucket_name == "" || (can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name)) && !can(regex("\\.\\.|^xn--|-s3alias$", var.bucket_name)))
    error_message = "bucket_name: an S3 bucket name (3 to 63 lower-case letters, digits, dots and hyphens), or empty."
  }
}

variable "force_destroy" {
  description = "Allow destroying the bucket while it still holds templates."
  type        = bool
  default     = false
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which S3 discards multipart uploads that were never completed."
  type        = number
  default     = 7
  validation {
    # Uploads resume across days (a client that comes back continues its session); parts
    # older than this are billed storage nobody will use.
    condition     = var.abort_incomplete_multipart_days >= 1 && var.abort_incomplete_multipart_days <= 365 && floor(var.abort_incomplete_multipart_days) == var.abort_incomplete_multipart_days
    error_message = "abort_incomplete_multipart_days: a whole number of days from 1 to 365."
  }
}

variable "vpc_id" {
  description = "VPC of the Redis cluster."
  type        = string
  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id: a VPC id (vpc-…)."
  }
}

variable "subnet_ids" {
  description = "Private subnets for the Redis cluster (two or more availability zones)."
  type        = list(string)
  validation {
    condition     = length(var.subnet_ids) >= 1 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "subnet_ids: one or more subnet ids (subnet-…); two or more zones for failover."
  }
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
  validation {
    condition     = can(regex("^cache\\.[a-z0-9]+\\.[a-z0-9]+$", var.redis_node_type))
    error_message = "redis_node_type: an ElastiCache node type (cache.<family>.<size>)."
  }
}

variable "redis_engine_version" {
  description = "Redis engine version."
  type        = string
  default     = "7.1"
  validation {
    condition     = can(regex("^[0-9]+\\.[0-9x]+$", var.redis_engine_version))
    error_message = "redis_engine_version: major.minor, e.g. 7.1."
  }
}

variable "redis_replicas" {
  description = "Read replicas besides the primary; more than zero enables automatic failover."
  type        = number
  default     = 1
  validation {
    # A replication group has at most 6 nodes (1 primary + 5 replicas).
    condition     = var.redis_replicas >= 0 && var.redis_replicas <= 5 && floor(var.redis_replicas) == var.redis_replicas
    error_message = "redis_replicas: a whole number from 0 to 5."
  }
}

variable "redis_allowed_cidrs" {
  description = "CIDR blocks allowed to reach Redis."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for c in var.redis_allowed_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "redis_allowed_cidrs: IPv4 CIDR blocks, not 0.0.0.0/0."
  }
}

variable "redis_allowed_security_group_ids" {
  description = "Security groups (for example the EKS nodes') allowed to reach Redis."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for g in var.redis_allowed_security_group_ids : can(regex("^sg-[0-9a-f]{8,17}$", g))])
    error_message = "redis_allowed_security_group_ids: security group ids (sg-…)."
  }
}

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider; when set, an IRSA role is created."
  type        = string
  default     = ""
  validation {
    condition     = var.oidc_provider_arn == "" || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:oidc-provider/.+$", var.oidc_provider_arn))
    error_message = "oidc_provider_arn: an IAM OIDC provider ARN (arn:aws:iam::<account>:oidc-provider/…), or empty."
  }
}

variable "service_account_namespace" {
  description = "Kubernetes namespace of the vmreg service account (IRSA)."
  type        = string
  default     = "vmreg"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.service_account_namespace))
    error_message = "service_account_namespace: a Kubernetes namespace name."
  }
}

variable "service_account_name" {
  description = "Name of the vmreg service account (IRSA); the Helm chart names it after the release."
  type        = string
  default     = "vmreg"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.service_account_name))
    error_message = "service_account_name: a Kubernetes service account name."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
