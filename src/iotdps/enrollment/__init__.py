"""Enrollment records (individual enrollments, groups, CA certificates) and precedence."""

from iotdps.enrollment.models import (
    Attestation,
    CaCertificate,
    EnrollmentGroup,
    IndividualEnrollment,
    LinkedHub,
    RegistrationRecord,
    ServiceSettings,
)

__all__ = [
    "Attestation",
    "CaCertificate",
    "EnrollmentGroup",
    "IndividualEnrollment",
    "LinkedHub",
    "RegistrationRecord",
    "ServiceSettings",
]
