variable "name" {
  description = "Name prefix of every resource."
  type        = string
  default     = "vmreg"
}

variable "bucket_name" {
  description = "S3 bucket name; a name derived from var.name is used when empty."
  type        = string
  default     = ""
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
}

variable "vpc_id" {
  description = "VPC of the Redis cluster."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the Redis cluster (two or more availability zones)."
  type        = list(string)
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "redis_engine_version" {
  description = "Redis engine version."
  type        = string
  default     = "7.1"
}

variable "redis_replicas" {
  description = "Read replicas besides the primary; more than zero enables automatic failover."
  type        = number
  default     = 1
}

variable "redis_allowed_cidrs" {
  description = "CIDR blocks allowed to reach Redis."
  type        = list(string)
  default     = []
}

variable "redis_allowed_security_group_ids" {
  description = "Security groups (for example the EKS nodes') allowed to reach Redis."
  type        = list(string)
  default     = []
}

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider; when set, an IRSA role is created."
  type        = string
  default     = ""
}

variable "service_account_namespace" {
  description = "Kubernetes namespace of the vmreg service account (IRSA)."
  type        = string
  default     = "vmreg"
}

variable "service_account_name" {
  description = "Name of the vmreg service account (IRSA); the Helm chart names it after the release."
  type        = string
  default     = "vmreg"
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
