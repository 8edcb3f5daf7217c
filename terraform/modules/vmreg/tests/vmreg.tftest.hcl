# terraform test: the module planned against a mocked AWS provider (no account needed).
# Names that IAM keeps account-wide carry the region; invalid inputs are refused by the
# variables' validation blocks before anything is planned.

mock_provider "aws" {
  # Policies must be JSON objects, whatever the mock would make up.
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
  override_data {
    target = data.aws_caller_identity.current
    values = { account_id = "123456789012" }
  }
  override_data {
    target = data.aws_region.current
    values = { name = "eu-west-1" }
  }
  # The AUTH token must pass ElastiCache's own rule (16 to 128 characters).
  override_data {
    target = data.aws_secretsmanager_random_password.redis
    values = { random_password = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" }
  }
}

variables {
  vpc_id            = "vpc-0123456789abcdef0"
  subnet_ids        = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  oidc_provider_arn = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE"
}

run "iam_names_carry_the_region" {
  command = plan
  assert {
    condition     = aws_iam_policy.s3.name == "vmreg-eu-west-1-s3"
    error_message = "the IAM policy name lacks the region: ${aws_iam_policy.s3.name}"
  }
  assert {
    condition     = aws_iam_role.irsa[0].name == "vmreg-eu-west-1-irsa"
    error_message = "the IRSA role name lacks the region: ${aws_iam_role.irsa[0].name}"
  }
  assert {
    condition     = aws_s3_bucket.this.bucket == "vmreg-123456789012-eu-west-1"
    error_message = "unexpected bucket name ${aws_s3_bucket.this.bucket}"
  }
}

run "a_second_region_gets_other_iam_names" {
  command = plan
  override_data {
    target = data.aws_region.current
    values = { name = "us-east-1" }
  }
  assert {
    condition     = aws_iam_policy.s3.name == "vmreg-us-east-1-s3" && aws_iam_role.irsa[0].name == "vmreg-us-east-1-irsa"
    error_message = "a second region would collide with the first on IAM names"
  }
}

run "no_irsa_role_without_an_oidc_provider" {
  command = plan
  variables {
    oidc_provider_arn = ""
  }
  assert {
    condition     = length(aws_iam_role.irsa) == 0
    error_message = "an IRSA role was planned without an OIDC provider"
  }
}

run "refuses_a_name_s3_and_elasticache_cannot_take" {
  command = plan
  variables {
    name = "Vmreg_Prod"
  }
  expect_failures = [var.name]
}

run "refuses_a_bad_bucket_name" {
  command = plan
  variables {
    bucket_name = "Templates..bucket"
  }
  expect_failures = [var.bucket_name]
}

run "refuses_more_replicas_than_a_group_holds" {
  command = plan
  variables {
    redis_replicas = 6
  }
  expect_failures = [var.redis_replicas]
}

run "refuses_redis_open_to_the_internet" {
  command = plan
  variables {
    redis_allowed_cidrs = ["0.0.0.0/0"]
  }
  expect_failures = [var.redis_allowed_cidrs]
}

run "refuses_ids_of_the_wrong_kind" {
  command = plan
  variables {
    vpc_id     = "subnet-0123456789abcdef0"
    subnet_ids = ["vpc-0123456789abcdef0"]
  }
  expect_failures = [var.vpc_id, var.subnet_ids]
}

run "refuses_a_zero_day_multipart_expiry" {
  command = plan
  variables {
    abort_incomplete_multipart_days = 0
  }
  expect_failures = [var.abort_incomplete_multipart_days]
}
