from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from scoreboard import views
from scoreboard.login import ThrottledAuthenticationForm

admin.site.site_header = "Scoreboard administration"
admin.site.site_title = "Scoreboard"
admin.site.site_url = "/"
admin.site.login_form = ThrottledAuthenticationForm

urlpatterns = [
    path("", views.overview, name="overview"),
    path("tenants/<slug:slug>/", views.tenant_detail, name="tenant_detail"),
    path("export.csv", views.export_csv, name="export_csv"),
    path("healthz", views.healthz, name="healthz"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(authentication_form=ThrottledAuthenticationForm),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(settings.SCOREBOARD_ADMIN_PATH, admin.site.urls),
]
