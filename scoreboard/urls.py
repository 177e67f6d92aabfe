from django.contrib import admin
from django.urls import path

from scoreboard import views

admin.site.site_header = "Scoreboard administration"
admin.site.site_title = "Scoreboard"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
